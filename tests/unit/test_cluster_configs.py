"""Everything under cluster/ parses, and every sale-ray section in it validates (no Ray)."""

import json
from pathlib import Path

import pytest
import yaml

from sale_ray.config import SaleConfig, load_config, parse_yaml

CLUSTER = Path(__file__).resolve().parents[2] / "cluster"
FILES = sorted(p for p in CLUSTER.rglob("*.yaml"))


def docs(path):
    """Every document of a file; a key repeated in any of them is an error, as in a config."""
    return [d for d in parse_yaml(path.read_text(), str(path), documents=True) if d is not None]


def sale_sections(doc):
    """sale-ray configs embedded in a manifest: ConfigMap files, Serve app args, pools."""
    kind = doc.get("kind")
    if kind == "ConfigMap":
        return [
            parse_yaml(v, k) for k, v in doc.get("data", {}).items() if k.startswith("sale-ray")
        ]
    if kind == "RayService":
        serve = parse_yaml(doc["spec"]["serveConfigV2"], "serveConfigV2")
        return [a["args"]["sale_ray"] for a in serve["applications"]]
    if "applications" in doc:  # a Serve config file
        return [a["args"]["sale_ray"] for a in doc["applications"] if "sale_ray" in a["args"]]
    if "pool" in doc:
        return [doc]
    return []


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(CLUSTER)))
def test_every_file_parses_and_its_sale_ray_sections_validate(path):
    sections = [s for d in docs(path) for s in sale_sections(d)]
    if path.parent.name == "pools":
        load_config(path)  # the CLI's own loader, file errors named
    for s in sections:
        SaleConfig.model_validate(s)
    # the LLM pool's Serve files hold model servers, no sale-ray config: test_llm_pool_config.py
    assert sections or path.name in {"launcher.yaml", "serve_llm.yaml", "serve_vllm.yaml"}


def test_the_launcher_config_matches_rays_schema():
    jsonschema = pytest.importorskip("jsonschema")
    import ray.autoscaler

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    cfg = parse_yaml((CLUSTER / "launcher.yaml").read_text(), "launcher.yaml")
    jsonschema.validate(cfg, schema)
    types = cfg["available_node_types"]
    assert "GPU" not in types["head"]["resources"] and types["gpu_worker"]["resources"]["GPU"] == 1
    assert types["head"]["resources"]["quota_openai"] > 0


def test_kuberay_manifests_declare_the_quota_resources_the_pools_pin():
    declared, pinned = set(), set()
    for path in (CLUSTER / "kuberay").glob("*.yaml"):
        for d in docs(path):
            text = yaml.safe_dump(d)
            declared |= {q for q in ("quota_openai",) if f'\\"{q}\\"' in text or f'"{q}"' in text}
            for s in sale_sections(d):
                for a in SaleConfig.model_validate(s).pool.agents:
                    pinned |= set(a.resources.custom)
    assert pinned <= declared
    kinds = {d["kind"] for p in (CLUSTER / "kuberay").glob("*.yaml") for d in docs(p)}
    assert {"RayCluster", "RayJob", "RayService"} <= kinds


def test_dashboards_stay_on_loopback():
    for path in FILES:
        assert "dashboard-host=0.0.0.0" not in path.read_text()
        for d in docs(path):
            text = yaml.safe_dump(d)
            assert "dashboard-host: 0.0.0.0" not in text
