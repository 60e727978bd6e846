"""The deployment kit in docs/deploy/ is checked, not just shipped.

- compose.yaml against the Compose Specification's JSON schema (vendored by check-jsonschema,
  read offline), then for what byokbot needs of it;
- every Kubernetes manifest against the Kubernetes schemas bundled by kubernetes-validate
  (strict: unknown fields fail), then for how the pieces fit (selectors, probes, ports);
- the systemd unit with ``systemd-analyze verify`` and its offline security score;
- the Dockerfile's stages, user and copied paths; the Caddyfile's routes; and every config
  file in the kit through byokbot's own parser.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from core.config import parse_config

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "docs" / "deploy"
K8S = DEPLOY / "kubernetes"
K8S_VERSION = "1.33.0"


def _yaml_docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _config(text: str, where: Path) -> None:
    parse_config(tomllib.loads(text), source=where.name, base_dir=where.parent)


# ----- compose ---------------------------------------------------------------------------


def _compose() -> dict[str, Any]:
    (doc,) = _yaml_docs(DEPLOY / "compose.yaml")
    return doc


def test_compose_matches_the_compose_specification() -> None:
    schema_file = resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    schema = json.loads(schema_file.read_text())
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(_compose()), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)
    # The schema is strict enough to catch a typo: a misspelt key fails.
    broken = _compose()
    broken["services"]["bot"]["read_onyl"] = True
    assert list(validator.iter_errors(broken))


def test_compose_runs_postgres_the_bot_hardened_and_a_tls_proxy() -> None:
    services = _compose()["services"]
    assert set(services) == {"db", "bot", "proxy"}
    db, bot, proxy = services["db"], services["bot"], services["proxy"]
    assert db["image"].startswith("postgres:") and "healthcheck" in db
    assert bot["depends_on"]["db"]["condition"] == "service_healthy"
    assert bot["build"]["dockerfile"] == "docs/deploy/Dockerfile"
    assert (DEPLOY / bot["build"]["context"]).resolve() == ROOT
    assert bot["read_only"] is True and "/tmp" in bot["tmpfs"]
    assert bot["cap_drop"] == ["ALL"] and "no-new-privileges:true" in bot["security_opt"]
    assert not bot["user"].startswith("0")
    assert "ports" not in bot  # only the proxy is reachable from outside
    assert sorted(proxy["ports"]) == ["443:443", "80:80"]
    mounts = {m.split(":")[0]: m for m in proxy["volumes"]}
    assert mounts["./Caddyfile"].endswith(":ro")
    config_mount = next(m for m in bot["volumes"] if m.startswith("./config.compose.toml:"))
    assert config_mount == "./config.compose.toml:/var/lib/byokbot/config.toml:ro"
    assert (DEPLOY / bot["env_file"].replace(".env", ".env.example")).exists()
    for source in (
        *(m.split(":")[0] for m in bot["volumes"] + proxy["volumes"]),
        _compose()["secrets"]["pg_password"]["file"],
    ):
        if source.startswith("./") and source != "./pg_password.txt":
            assert (DEPLOY / source).exists(), source


def test_the_compose_config_parses_and_matches_the_proxy_routes() -> None:
    path = DEPLOY / "config.compose.toml"
    _config(path.read_text(), path)
    data = tomllib.loads(path.read_text())
    caddy = (DEPLOY / "Caddyfile").read_text()
    routes = dict(re.findall(r"handle (/\S+) \{\s*reverse_proxy (\S+)", caddy))
    tg, slack = data["telegram"], data["slack"]
    assert routes[f"/{tg['webhook_path']}"] == f"bot:{tg['webhook_port']}"
    assert tg["webhook_public_url"].endswith(f"/{tg['webhook_path']}")
    assert routes[slack["path"]] == f"bot:{slack['listen_port']}"
    assert data["health"]["listen"].endswith(":9464")
    assert "9464" not in caddy  # the health listener is not published


# ----- Kubernetes --------------------------------------------------------------------------


def _manifests() -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in _yaml_docs(path):
            out[doc["kind"]] = doc
    return out


def test_every_manifest_is_valid_kubernetes() -> None:
    docs = [(p, d) for p in sorted(K8S.glob("*.yaml")) for d in _yaml_docs(p)]
    assert docs
    for path, doc in docs:
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            raise AssertionError(f"{path.name}: {exc}") from None
    deployment = _manifests()["Deployment"]
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


def test_the_manifests_fit_together_for_several_replicas() -> None:
    m = _manifests()
    assert {
        "Deployment",
        "Service",
        "Secret",
        "PodDisruptionBudget",
        "ConfigMap",
        "Ingress",
    } <= set(m)
    dep = m["Deployment"]
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert dep["spec"]["replicas"] >= 2
    assert dep["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert m["Service"]["spec"]["selector"].items() <= labels.items()
    assert m["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert m["PodDisruptionBudget"]["spec"]["minAvailable"] < dep["spec"]["replicas"]
    pod = dep["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    (bot,) = pod["containers"]
    sc = bot["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    ports = {p["name"]: p["containerPort"] for p in bot["ports"]}
    assert bot["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert bot["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert [e["secretRef"]["name"] for e in bot["envFrom"]] == [m["Secret"]["metadata"]["name"]]
    assert "BYOKBOT_MASTER_KEY" in m["Secret"]["stringData"]
    for port in m["Service"]["spec"]["ports"]:
        assert port["targetPort"] in ports
    backends = [
        p["backend"]["service"] for r in m["Ingress"]["spec"]["rules"] for p in r["http"]["paths"]
    ]
    service_ports = {p["name"] for p in m["Service"]["spec"]["ports"]}
    assert all(b["name"] == m["Service"]["metadata"]["name"] for b in backends)
    assert {b["port"]["name"] for b in backends} <= service_ports - {"metrics"}
    # The config the pods mount parses, and listens where the probes and ports say.
    text = m["ConfigMap"]["data"]["config.toml"]
    _config(text, K8S / "config.toml")
    data = tomllib.loads(text)
    assert data["core"]["database_url"].startswith("postgresql+asyncpg://")
    assert data["health"]["listen"] == f"0.0.0.0:{ports['metrics']}"
    assert data["telegram"]["webhook_port"] == ports["telegram"]
    assert data["slack"]["listen_port"] == ports["slack"]
    mount = next(v for v in bot["volumeMounts"] if v["name"] == "config")
    assert mount["mountPath"] == "/var/lib/byokbot/config.toml"


# ----- systemd -----------------------------------------------------------------------------


def _unit_for_here(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at this installation (verify checks it exists)."""
    script = Path(sys.executable).with_name("byokbot")
    text = (DEPLOY / "byokbot.service").read_text().replace("/opt/byokbot/bin/byokbot", str(script))
    unit = tmp_path / "byokbot.service"
    unit.write_text(text)
    return unit


def _analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found is None:
        raise AssertionError(
            "systemd-analyze is missing: apt-get install systemd (.ci/run installs it)"
        )
    return found


def test_the_systemd_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    unit = _unit_for_here(tmp_path)
    done = subprocess.run([_analyze(), "verify", str(unit)], capture_output=True, text=True)
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr
    # The check can fail: an unknown directive is reported.
    unit.write_text(
        unit.read_text().replace("ProtectHome=yes", "ProtectHome=yes\nProtectHomme=yes")
    )
    done = subprocess.run([_analyze(), "verify", str(unit)], capture_output=True, text=True)
    assert "ProtectHomme" in done.stderr


def test_the_systemd_unit_is_hardened(tmp_path: Path) -> None:
    unit = _unit_for_here(tmp_path)
    done = subprocess.run(
        [_analyze(), "security", "--offline=true", "--threshold=20", str(unit)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout[-2000:]
    text = unit.read_text()
    for line in ("NoNewPrivileges=yes", "ProtectSystem=strict", "CapabilityBoundingSet=\n"):
        assert line in text
    assert re.search(r"^User=byokbot$", text, re.M)


# ----- Dockerfile and Caddyfile --------------------------------------------------------------


def _instructions() -> list[tuple[str, str]]:
    text = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_the_dockerfile_is_multi_stage_non_root_and_copies_what_exists() -> None:
    ins = _instructions()
    stages = [rest for word, rest in ins if word == "FROM"]
    assert len(stages) >= 2 and stages[0].endswith("AS build")
    final = max(i for i, (w, _) in enumerate(ins) if w == "FROM")
    runtime = ins[final:]
    users = [rest for word, rest in runtime if word == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    copies = [rest for word, rest in runtime if word == "COPY"]
    assert copies and all(c.startswith("--from=build ") for c in copies)  # nothing else enters
    for word, rest in ins:
        if word == "COPY" and not rest.startswith("--from"):
            for source in rest.split()[:-1]:
                assert (ROOT / source).exists(), source
    env = " ".join(rest for word, rest in runtime if word == "ENV")
    assert "BYOKBOT_CONFIG=/var/lib/byokbot/config.toml" in env
    assert "MPLCONFIGDIR=/tmp/" in env  # matplotlib's cache on the tmpfs, not the image
    assert ("ENTRYPOINT", '["byokbot"]') in runtime
    assert any(w == "HEALTHCHECK" and "/healthz" in r for w, r in runtime)
    # The sandbox's needs are written down for both ways byokbot can run in the container.
    notes = (DEPLOY / "Dockerfile").read_text()
    assert "TO BE CONFIRMED" not in notes and "not yet merged" not in notes
    assert "CAP_SETUID" in notes and "unshare(CLONE_NEWUSER)" in notes and "landlock" in notes


def test_the_caddyfile_forwards_only_the_webhook_paths() -> None:
    caddy = (DEPLOY / "Caddyfile").read_text()
    assert caddy.count("{") == caddy.count("}")
    assert re.findall(r"reverse_proxy (\S+)", caddy) == ["bot:8443", "bot:3000"]
    assert "respond 404" in caddy
