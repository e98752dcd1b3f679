import pytest
import yaml

from kqa.training.config import TrainConfig, parse_config


def test_defaults_are_the_reference_recipe():
    cfg = TrainConfig()
    assert cfg.model_name_or_path == "klue/bert-base"
    assert cfg.dataset_name == "KorQuAD/squad_kor_v1"
    assert (cfg.features.max_seq_length, cfg.features.doc_stride, cfg.learning_rate) == (384, 128, 3e-5)
    assert cfg.metric_for_best_model == "f1" and cfg.greater_is_better


def test_flags_override_yaml_and_yaml_overrides_defaults(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"learning_rate": 5e-5, "num_train_epochs": 3, "seed": 7}))
    cfg = parse_config(["--config", str(path), "--seed", "11", "--group_by_length"])
    assert cfg.learning_rate == 5e-5  # from YAML
    assert cfg.num_train_epochs == 3
    assert cfg.seed == 11  # the flag wins
    assert cfg.group_by_length is True
    assert cfg.features.doc_stride == 128  # default untouched


def test_optional_and_list_flags():
    cfg = parse_config(
        [
            "--max_train_steps",
            "none",
            "--train_files",
            "a.json",
            "b.json",
            "--validation_files",
            "dev=x/dev.json",
            "y/other.json",
        ]
    )
    assert cfg.max_train_steps is None
    assert cfg.train_files == ["a.json", "b.json"]
    named = cfg.named_validation_files()
    assert list(named) == ["dev", "other"]


def test_yaml_mapping_of_validation_sets_and_data_dir(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "data_dir": str(tmp_path / "data"),
                "train_files": "train.json",
                "validation_files": {"korquad": "k/dev.json", "tydi": "t/dev.json"},
            }
        )
    )
    cfg = parse_config(["--config", str(path)])
    assert cfg.train_files == ["train.json"]
    assert cfg.resolve_data_path("train.json") == tmp_path / "data" / "train.json"
    assert cfg.named_validation_files() == {
        "korquad": tmp_path / "data" / "k/dev.json",
        "tydi": tmp_path / "data" / "t/dev.json",
    }


def test_data_dir_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("KQA_DATA_DIR", str(tmp_path))
    assert TrainConfig().resolve_data_path("x.json") == tmp_path / "x.json"
    assert TrainConfig().resolve_data_path("/abs/x.json").as_posix() == "/abs/x.json"


def test_unknown_yaml_key_is_an_error(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("learning_rat: 1e-4\n")
    with pytest.raises(ValueError, match="unknown config keys: learning_rat"):
        parse_config(["--config", str(path)])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"eval_strategy": "sometimes"}, "eval_strategy"),
        ({"eval_strategy": "steps"}, "eval_steps"),
        ({"mixed_precision": "fp8"}, "mixed_precision"),
        ({"per_device_train_batch_size": 0}, "per_device_train_batch_size"),
        ({"warmup_ratio": 1.5}, "warmup_ratio"),
        ({"optim": "sgd"}, "optim"),
    ],
)
def test_invalid_values_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**kwargs)


def test_duplicate_validation_names_rejected():
    cfg = TrainConfig(validation_files=["a/dev.json", "b/dev.json"])
    with pytest.raises(ValueError, match="named 'dev'"):
        cfg.named_validation_files()


def test_resolved_config_round_trips_through_yaml(tmp_path):
    cfg = TrainConfig(train_files=["t.json"], validation_files=["d=dev.json"], learning_rate=1e-4)
    cfg.save(tmp_path / "train_config.yaml")
    again = parse_config(["--config", str(tmp_path / "train_config.yaml")])
    assert again == cfg
