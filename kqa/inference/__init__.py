"""Answers from a saved model: `QuestionAnswerer` (`kqa.inference.answerer`), the runtimes it runs on
(`kqa.inference.runtimes`: PyTorch, PyTorch int8, ONNX Runtime) and `kqa export`
(`kqa.inference.export`: ONNX fp32 / int8 with probes), and the transformers question-answering
pipeline's call over it (`kqa.inference.qa_pipeline`: `pipeline`, `QuestionAnsweringPipeline`)."""

from kqa.inference.answerer import Answer, QuestionAnswerer, examples_table
from kqa.inference.qa_pipeline import QuestionAnsweringPipeline, pipeline

__all__ = ["Answer", "QuestionAnswerer", "QuestionAnsweringPipeline", "examples_table", "pipeline"]
