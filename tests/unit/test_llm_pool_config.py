"""The LLM pool's files: the llama.cpp Serve file and its pool validate, bad input is an error
naming the field, and the vLLM (Ray Serve LLM) file serves the same names at the same routes,
checked against Ray's own schemas (vLLM itself is not installed here: nothing of it runs)."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

from sale_ray.config import load_config, parse_yaml
from sale_ray.errors import ConfigError
from sale_ray.serve.llm_pool import (
    IMPORT_PATH,
    ROUTE_ROOT,
    VLLM_IMPORT_PATH,
    LlmModelSpec,
    app_builder,
    build_app,
    load_llm_pool,
)

ROOT = Path(__file__).resolve().parents[2]
LOCAL = ROOT / "cluster" / "serve_llm.yaml"
VLLM = ROOT / "cluster" / "serve_vllm.yaml"
POOL = ROOT / "cluster" / "pools" / "serve_llm.yaml"

APP = (
    "applications:\n"
    "  - name: llm-a\n"
    "    route_prefix: /llm/a\n"
    "    import_path: sale_ray.serve.llm_pool:app_builder\n"
    "    args: {args}\n"
)


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "llm.yaml"
    p.write_text(text)
    return p


def _error(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as e:
        load_llm_pool(_write(tmp_path, text))
    return str(e.value)


def vllm_routes(doc: dict) -> dict[str, str]:
    """model id -> route prefix of a Ray Serve LLM file, with its structure checked: one
    ``build_openai_app`` app per model, one LLM config each, its model id the route's name."""
    routes = {}
    for app in doc["applications"]:
        assert set(app) == {"name", "route_prefix", "import_path", "args"}, app.get("name")
        assert app["import_path"] == VLLM_IMPORT_PATH
        assert set(app["args"]) == {"llm_configs"}
        (cfg,) = app["args"]["llm_configs"]
        model_id = cfg["model_loading_config"]["model_id"]
        assert app["route_prefix"] == f"{ROUTE_ROOT}/{model_id}"
        routes[model_id] = app["route_prefix"]
    return routes


# --- the shipped files ----------------------------------------------------------------------------
def test_the_shipped_llama_cpp_file_validates_and_each_app_builds():
    pool = load_llm_pool(LOCAL)
    assert [a.args.name for a in pool.applications] == ["smollm2-135m", "qwen-0.5b", "qwen-1.5b"]
    for a in pool.applications:
        assert a.import_path == IMPORT_PATH and a.route_prefix == f"{ROUTE_ROOT}/{a.args.name}"
        assert a.args.ray_actor_options.as_ray() == {"num_cpus": 0, "num_gpus": 0}
        build_app(a.args)  # binding only: nothing starts without Serve
    assert pool.http_options.host == "127.0.0.1"


def test_ray_actor_options_reach_the_deployment_so_a_replica_can_pin_a_gpu():
    spec = LlmModelSpec(
        name="a",
        model="smollm2-135m",
        num_replicas=2,
        ray_actor_options={"num_cpus": 2, "num_gpus": 1, "resources": {"gpu_node": 1}},
    )
    d = build_app(spec)._bound_deployment  # Serve has no public accessor for a bound app
    assert d.ray_actor_options == {"num_cpus": 2, "num_gpus": 1, "resources": {"gpu_node": 1}}
    assert d.num_replicas == 2 and d.max_ongoing_requests == 16


def test_the_pool_is_backend_openai_at_exactly_the_routes_both_serve_files_serve():
    pool = load_config(POOL)
    local = {a.args.name: a.route_prefix for a in load_llm_pool(LOCAL).applications}
    vllm = vllm_routes(parse_yaml(VLLM.read_text(), str(VLLM)))
    assert local == vllm
    for agent in pool.pool.agents:
        url = urlparse(agent.base_url)
        assert agent.backend == "openai" and agent.api_key_env is None
        assert (url.hostname, url.port) == ("127.0.0.1", 8000)
        assert url.path == local[agent.model] + "/v1"  # the model id the route answers for
        assert agent.name == agent.model
        assert agent.price_in_per_mtok is not None and agent.price_out_per_mtok is not None
    assert {a.model for a in pool.pool.agents} == set(local)
    # the same agent names as the default local pool, so records and fitted weights carry over
    assert [a.name for a in pool.pool.agents] == [
        a.name for a in load_config(ROOT / "cluster/pools/local.yaml").pool.agents
    ]


def test_both_serve_files_match_serves_schema():
    from ray.serve.schema import DeploymentSchema, ServeDeploySchema

    for path in (LOCAL, VLLM):
        doc = parse_yaml(path.read_text(), str(path))
        ServeDeploySchema.model_validate(doc)
        assert doc["http_options"]["host"] == "127.0.0.1"
    # Ray Serve LLM passes deployment_config on as Serve deployment options unchecked
    for app in parse_yaml(VLLM.read_text(), str(VLLM))["applications"]:
        for cfg in app["args"]["llm_configs"]:
            assert set(cfg["deployment_config"]) <= set(DeploymentSchema.model_fields)


def test_the_vllm_file_validates_as_ray_serve_llm_configs():
    # ray.serve.llm itself imports vLLM; its LLMConfig is this class, which does not
    llm_config = pytest.importorskip("ray.llm._internal.serve.core.configs.llm_config")
    doc = parse_yaml(VLLM.read_text(), str(VLLM))
    for app in doc["applications"]:
        for raw in app["args"]["llm_configs"]:
            cfg = llm_config.LLMConfig.model_validate(raw)
            assert cfg.model_id == app["route_prefix"].rsplit("/", 1)[1]
    bad = dict(doc["applications"][0]["args"]["llm_configs"][0], accelerator_typo="L4")
    with pytest.raises(ValueError, match="accelerator_typo"):
        llm_config.LLMConfig.model_validate(bad)


def test_the_route_check_of_the_vllm_file_can_fail():
    doc = yaml.safe_load(VLLM.read_text())
    doc["applications"][1]["args"]["llm_configs"][0]["model_loading_config"]["model_id"] = "x"
    with pytest.raises(AssertionError):
        vllm_routes(doc)


# --- errors that name the field -------------------------------------------------------------------
def test_a_typo_in_a_models_args_names_the_file_and_the_field(tmp_path):
    msg = _error(tmp_path, APP.format(args="{name: a, model: smollm2-135m, n_ctxx: 2048}"))
    assert "llm.yaml: applications.0.args.n_ctxx: Extra inputs are not permitted" in msg


def test_a_bad_value_names_its_field(tmp_path):
    msg = _error(tmp_path, APP.format(args="{name: a, model: smollm2-135m, n_parallel: 0}"))
    assert "applications.0.args.n_parallel: Input should be greater than or equal to 1" in msg
    msg = _error(
        tmp_path,
        APP.format(args="{name: a, model: smollm2-135m, ray_actor_options: {num_gpus: -1}}"),
    )
    assert "applications.0.args.ray_actor_options.num_gpus" in msg


def test_a_model_needs_exactly_one_source(tmp_path):
    assert "give exactly one of model, model_path, attach_url (got none)" in _error(
        tmp_path, APP.format(args="{name: a}")
    )
    both = "{name: a, model: smollm2-135m, attach_url: 'http://127.0.0.1:9/v1'}"
    assert "(got model, attach_url)" in _error(tmp_path, APP.format(args=both))


def test_an_unknown_catalog_model_lists_the_known_ones(tmp_path):
    msg = _error(tmp_path, APP.format(args="{name: a, model: gpt-5}"))
    assert "unknown local model 'gpt-5'; known: smollm2-135m" in msg


def test_a_relative_model_path_and_a_bad_name_are_refused(tmp_path):
    assert "model_path: must be an absolute path" in _error(
        tmp_path, APP.format(args="{name: a, model_path: m.gguf}")
    )
    assert "applications.0.args.name: String should match pattern" in _error(
        tmp_path, APP.format(args="{name: 'a/b', model: smollm2-135m}")
    )


def test_a_vllm_app_is_not_silently_taken_for_ours(tmp_path):
    text = APP.format(args="{name: a, model: smollm2-135m}").replace(IMPORT_PATH, VLLM_IMPORT_PATH)
    assert "applications.0.import_path: Input should be" in _error(tmp_path, text)


def test_repeated_routes_and_model_names_are_errors(tmp_path):
    one = APP.format(args="{name: a, model: smollm2-135m}")
    twice = one + one.split("applications:\n", 1)[1].replace("llm-a", "llm-b")
    assert "route_prefix repeated: ['/llm/a']" in _error(tmp_path, twice)
    again = twice.replace("/llm/a\n    import_path", "/llm/b\n    import_path", 1)
    assert "args.name repeated: ['a']" in _error(tmp_path, again)


def test_serve_keys_this_door_does_not_honour_are_named(tmp_path):
    text = APP.format(args="{name: a, model: smollm2-135m}") + "    deployments: []\n"
    assert "applications.0.deployments: Extra inputs are not permitted" in _error(tmp_path, text)
    assert "proxy_location: Input should be" in _error(
        tmp_path, "proxy_location: Disabled\n" + APP.format(args="{name: a, model: smollm2-135m}")
    )


def test_a_missing_file_and_a_repeated_key_are_named(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml: config file not found"):
        load_llm_pool(tmp_path / "nope.yaml")
    msg = _error(tmp_path, APP.format(args="{name: a, name: b, model: smollm2-135m}"))
    assert "key 'name' repeated" in msg


def test_the_serve_run_builder_names_the_field_too():
    with pytest.raises(ConfigError, match=r"llm pool app args: threads: Input should be"):
        app_builder({"name": "a", "model": "smollm2-135m", "threads": 0})
    spec = LlmModelSpec(name="a", attach_url="http://127.0.0.1:9/v1")
    assert app_builder(spec.model_dump()) is not None


def test_select_serves_a_subset_and_names_an_unknown_model():
    pool = load_llm_pool(LOCAL)
    assert [a.args.name for a in pool.select(["qwen-0.5b"])] == ["qwen-0.5b"]
    with pytest.raises(ConfigError, match=r"no application serves \['qwen-7b'\]"):
        pool.select(["qwen-7b"])


def test_the_cli_fails_on_an_unknown_model_or_a_bad_file_before_anything_starts(tmp_path, capsys):
    from sale_ray.cli import main

    # the unit tier forbids ray.init: reaching Ray here would fail this test loudly
    assert main(["serve-llm", "--config", str(LOCAL), "--only", "qwen-7b"]) == 2
    assert "no application serves ['qwen-7b']" in capsys.readouterr().err
    bad = _write(tmp_path, "applications: []\n")
    assert main(["serve-llm", "--config", str(bad)]) == 2
    assert "llm.yaml: applications: List should have at least 1 item" in capsys.readouterr().err
