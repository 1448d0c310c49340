"""Configuration: the embedded default, YAML files, and errors that say where."""

import pytest

from sale_ray.config import SaleConfig, load_config
from sale_ray.errors import ConfigError


def test_no_config_file_means_the_embedded_local_pool():
    cfg = load_config(None)
    assert [a.name for a in cfg.pool.agents] == ["smollm2-135m", "qwen-0.5b", "qwen-1.5b"]
    assert all(a.backend == "local" and a.resources.num_cpus == 0 for a in cfg.pool.agents)


def test_the_shipped_pool_files_validate_and_keep_their_spending_caps():
    for name in ["local", "openai", "vllm"]:
        load_config(f"cluster/pools/{name}.yaml")
    hosted = load_config("cluster/pools/openai.yaml")
    assert [a.quota.budget_usd for a in hosted.pool.agents] == [10, 10]


def test_a_repeated_key_is_an_error_naming_it_and_both_lines(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text(
        "pool:\n  agents:\n    - name: a\n      model: m\n"
        "      quota: {rpm: 5, budget_usd: 10}\n      quota: {rpm: 5}\n"
    )
    with pytest.raises(
        ConfigError, match=r"c.yaml: line 6: key 'quota' repeated \(first at line 5\)"
    ):
        load_config(p)


def test_a_typo_is_an_error_naming_the_field(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("auction:\n  plan_max_tokenz: 50\n")
    with pytest.raises(ConfigError, match=r"c.yaml: auction.plan_max_tokenz: Extra inputs"):
        load_config(p)


def test_duplicate_agent_names_are_refused(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("pool:\n  agents:\n    - {name: a, model: m}\n    - {name: a, model: m}\n")
    with pytest.raises(ConfigError, match="repeated"):
        load_config(p)


def test_an_openai_agent_needs_a_base_url():
    with pytest.raises(ValueError, match="base_url"):
        SaleConfig.model_validate(
            {"pool": {"agents": [{"name": "x", "backend": "openai", "model": "m"}]}}
        )


def test_missing_and_broken_files_are_clear(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("pool: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_the_error_never_echoes_the_offending_value(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("pool:\n  agents:\n    - {name: a, model: m, api_key_env: 5, secret: sk-abc123}\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert "sk-abc123" not in str(e.value)


def test_the_configuration_reference_is_up_to_date():
    from pathlib import Path

    from sale_ray.config import reference_markdown

    doc = Path(__file__).parents[2] / "docs" / "configuration.md"
    assert doc.read_text() == reference_markdown(), (
        "docs/configuration.md is stale: run `python -m sale_ray.config > docs/configuration.md`"
    )
