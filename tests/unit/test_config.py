import pytest

from ffpipe import config as config_mod
from ffpipe.errors import ConfigError


def test_defaults_are_valid_and_round_trip_through_toml(tmp_path):
    cfg = config_mod.load()
    path = tmp_path / "c.toml"
    path.write_text(config_mod.to_toml(cfg))
    assert config_mod.load(path) == cfg


def test_file_then_overrides_in_order(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[train]\nlr = 0.3\nbatch_size = 64\n[model]\nname = "resnet18"\n')
    cfg = config_mod.load(path, ["train.lr=0.1", "data.synthetic_shape=[1, 8, 8]", "algo.name=bp"])
    assert cfg.train.lr == 0.1 and cfg.train.batch_size == 64
    assert cfg.model.name == "resnet18" and cfg.algo.name == "bp"
    assert cfg.data.synthetic_shape == [1, 8, 8]


def test_int_is_accepted_for_float_but_not_the_reverse():
    assert config_mod.load(None, ["train.lr=1"]).train.lr == 1.0
    with pytest.raises(ConfigError, match="'train.batch_size' must be of type int"):
        config_mod.load(None, ["train.batch_size=1.5"])


@pytest.mark.parametrize("override, message", [
    ("train.lrr=0.1", "^unknown config key 'train.lrr'; did you mean 'train.lr'\\?$"),
    ("train.bach_size=3", "^unknown config key 'train.bach_size'; did you mean 'train.batch_size'\\?$"),
    ("train.zzz=3", "^unknown config key 'train.zzz'; keys of \\[train\\]: epochs, "),
    ("trian.lr=0.1", "^unknown config section '\\[trian\\]'; did you mean '\\[train\\]'\\?$"),
    ("zzz.lr=0.1", "^unknown config section '\\[zzz\\]'; sections: model, algo, data"),
    ("train.batch_size=0", "'train.batch_size' must be >= 1"),
    ("model.name=resnet51", "choose one of: resnet18, resnet34"),
    ("model.granularity=blocks", "choose one of: layer, block"),
    ("algo.temperature=0", "'algo.temperature' must be > 0"),
    ("train.deterministic=1", "'train.deterministic' must be of type bool"),
    ("data.train_subset=1.5", "'data.train_subset' must be 0"),
    ("pipeline.boundaries=[3, 2]", "must be increasing"),
    ("algo.name=ff", "needs model.name = 'mlp'"),
    ("data.jpeg_decoder=nvimgcodec-gpu", "choose one of: auto, torchcodec, torchvision, nvimgcodec-hw"),
    ("train.lr", "--set expects section.key=value"),
])
def test_bad_values_name_the_key_and_the_fix(override, message):
    with pytest.raises(ConfigError, match=message):
        config_mod.load(None, [override])


def test_a_typo_in_a_config_file_is_named_with_the_file_and_the_nearest_key(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text("[train]\nbach_size = 3\n")
    with pytest.raises(ConfigError, match=f"^unknown config key 'train.bach_size' in {path}; "
                                          "did you mean 'train.batch_size'\\?$"):
        config_mod.load(path)
    path.write_text("[pipline]\nstages = 2\n")
    with pytest.raises(ConfigError, match=f"^unknown config section '\\[pipline\\]' in {path}; "
                                          "did you mean '\\[pipeline\\]'\\?$"):
        config_mod.load(path, ["train.epochs=2"])


def test_missing_or_broken_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        config_mod.load(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[train\nlr = 1")
    with pytest.raises(ConfigError, match="is not valid TOML"):
        config_mod.load(bad)


def test_string_values_need_no_quotes():
    assert config_mod.parse_override("model.name=resnet18") == ("model", "name", "resnet18")
    assert config_mod.parse_override("run.dir=runs/a b") == ("run", "dir", "runs/a b")


def test_describe_lists_every_key_with_its_default_and_choices():
    import dataclasses

    text = config_mod.describe()
    defaults = config_mod.Config()
    for section in config_mod.SECTIONS:
        for field in dataclasses.fields(getattr(defaults, section)):
            value = config_mod._toml_value(getattr(getattr(defaults, section), field.name))
            assert f"{section}.{field.name} = {value}" in text
            if field.metadata["choices"]:
                assert f"(one of: {', '.join(field.metadata['choices'])})" in text


def test_a_jpeg_library_for_the_cpu_path_is_refused_with_the_fix():
    # data.decode = 'cpu' decodes with PIL: a library chosen there would be silently ignored
    with pytest.raises(ConfigError, match="data.jpeg_decoder.*set data.decode = 'gpu' or data.jpeg_decoder = 'auto'"):
        config_mod.load(None, ["data.decode=cpu", "data.jpeg_decoder=nvimgcodec-cpu"])
    assert config_mod.load(None, ["data.decode=gpu", "data.jpeg_decoder=nvimgcodec-cpu"]).data.jpeg_decoder == "nvimgcodec-cpu"
