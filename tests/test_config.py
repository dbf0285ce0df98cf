import pytest
import yaml

from medpipe.config import ConfigError, load_config, validate_config


def demo_config(repo_root):
    return yaml.safe_load((repo_root / "config/config.yaml").read_text())


def test_demo_config_is_valid_and_defaults_are_filled(repo_root):
    config = load_config(repo_root / "config/config.yaml")
    assert config["results_dir"] == "results"
    assert config["ingest"]["chunks_3d"] == [32, 256, 256]
    assert config["datasets"]["demo_ct"]["classes"] == {1: "liver", 2: "kidney", 3: "spleen", 4: "tumour"}
    assert config["corpus"]["variants"]["p60"] == {"train": 0.5, "val": 0.1}


@pytest.mark.parametrize(
    "mutate, key",
    [
        (lambda c: c["datasets"]["demo_ct"].update(modality="cat"), "datasets.demo_ct.modality"),
        (lambda c: c["datasets"]["demo_ct"].update(ndim=4), "datasets.demo_ct.ndim"),
        (lambda c: c["datasets"]["demo_ct"].pop("labels"), "datasets.demo_ct"),
        (lambda c: c["datasets"]["demo_ct"].update(colour="red"), "datasets.demo_ct"),
        (lambda c: c["datasets"].update({"bad name!": c["datasets"]["demo_ct"]}), "datasets"),
        (lambda c: c["datasets"]["demo_ct"].update(roles=["segment"]), "datasets.demo_ct.roles.0"),
        (lambda c: c.update(sed=1), "(top level)"),
    ],
)
def test_errors_name_the_bad_key(repo_root, mutate, key):
    config = demo_config(repo_root)
    mutate(config)
    with pytest.raises(ConfigError) as error:
        validate_config(config, source="my.yaml")
    assert f"my.yaml: {key}:" in str(error.value)


def test_unreadable_and_non_yaml_files_are_named(tmp_path):
    with pytest.raises(ConfigError, match="missing.yaml: cannot read"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("datasets: [\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_config(bad)


@pytest.mark.parametrize("value", ["", "  ", "/", "//", "/./", "/..", "res{ults}"])
def test_results_dir_must_be_a_folder_of_its_own(repo_root, value):
    """Every output, log and config snapshot lands under results_dir: never empty or the root."""
    config = demo_config(repo_root)
    config["results_dir"] = value
    with pytest.raises(ConfigError) as error:
        validate_config(config, source="my.yaml")
    message = str(error.value)
    assert message.startswith("my.yaml: results_dir: ") and "\n" not in message, message


@pytest.mark.parametrize("value", ["", "/"])
def test_schema_alone_rejects_an_empty_or_root_results_dir(value):
    import jsonschema

    from medpipe.config import schema

    jsonschema.Draft202012Validator(schema()["properties"]["results_dir"]).validate("results")
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(schema()["properties"]["results_dir"]).validate(value)


@pytest.mark.parametrize("value", ["results", "out dir/it's", "/abs/results", "./results", "$(touch x)"])
def test_results_dir_may_hold_spaces_quotes_and_shell_characters(repo_root, value):
    config = demo_config(repo_root)
    config["results_dir"] = value
    assert validate_config(config, source="my.yaml")["results_dir"] == value


def test_workflow_schema_is_the_packaged_schema(repo_root):
    """One schema: the package's file (read through importlib.resources); workflow/schemas links to it."""
    from importlib import resources

    packaged = resources.files("medpipe").joinpath("schemas/config.schema.yaml")
    link = repo_root / "workflow/schemas/config.schema.yaml"
    assert link.is_symlink() and not (repo_root / "src/medpipe/schemas/config.schema.yaml").is_symlink()
    assert link.read_text() == packaged.read_text()
