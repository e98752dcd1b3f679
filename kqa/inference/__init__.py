"""Answers from a saved model: `QuestionAnswerer` (`kqa.inference.answerer`), the runtimes it runs on
(`kqa.inference.runtimes`: PyTorch, PyTorch int8, ONNX Runtime) and `kqa export`
(`kqa.inference.export`: ONNX fp32 / int8 with probes)."""

from kqa.inference.answerer import Answer, QuestionAnswerer, examples_table

__all__ = ["Answer", "QuestionAnswerer", "examples_table"]
