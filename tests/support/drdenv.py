"""A throwaway drd installation for end-to-end tests: a drd.yaml, plans, a key in the
environment, and a way to run the real `drd` command line as a subprocess."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from drd import crypto
from tests.support.fakegcs import FakeGcsServer


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class DrdEnv:
    root: Path
    key: str = field(default_factory=crypto.generate_key)
    regions: list[dict[str, Any]] = field(default_factory=list)
    plans: dict[str, dict[str, Any]] = field(default_factory=dict)
    daemon: dict[str, Any] = field(default_factory=dict)
    api_listen: str = "127.0.0.1:0"
    api: dict[str, Any] = field(default_factory=lambda: {"public_read": True})

    @property
    def config_path(self) -> Path:
        return self.root / "drd.yaml"

    def add_local_region(self, name: str) -> Path:
        path = self.root / "regions" / name
        path.mkdir(parents=True, exist_ok=True)
        self.regions.append({"name": name, "url": f"file:{path}"})
        return path

    def add_gcs_region(
        self, name: str, server: FakeGcsServer, bucket: str, *, endpoint: str | None = None
    ) -> None:
        """`endpoint`: reach the server through it (a proxy) instead of directly."""
        server.create_bucket(bucket)
        self.regions.append(
            {
                "name": name,
                "url": f"gs://{bucket}/drd",
                "project": "drd-test",
                "endpoint": endpoint or server.endpoint,
                "credentials": {"source": "anonymous"},
                "chunk_size": "1MiB",
                "retry_deadline": "2s",
            }
        )

    def add_plan(
        self,
        name: str,
        sources: list[dict[str, Any]],
        *,
        regions: list[str] | None = None,
        min_copies: int | None = None,
        **extra: Any,
    ) -> None:
        names = regions or [r["name"] for r in self.regions]
        self.plans[name] = {
            "name": name,
            "owner": "sre@example.com",
            "reviewed_on": "2026-06-01",
            "targets": {"rpo": "6h", "rto": "1h"},
            "schedule": {"every": "4h"},
            "storage": {"regions": names, "min_copies": min_copies or len(names)},
            "sources": sources,
            **extra,
        }

    @classmethod
    def files_plan(cls, root: Path, *, port: int | None = None) -> DrdEnv:
        """Two local regions and plan `p` with one small files source `tree`, the API on a
        free loopback port (or `port`): the smallest real estate a daemon test runs on."""
        env = cls(root)
        env.add_local_region("a")
        env.add_local_region("b")
        data = root / "data"
        data.mkdir(exist_ok=True)
        (data / "f.txt").write_text("hello")
        env.add_plan("p", [{"name": "tree", "kind": "files", "path": str(data)}])
        env.api_listen = f"127.0.0.1:{port if port is not None else free_port()}"
        return env

    @property
    def api_port(self) -> int:
        return int(self.api_listen.rpartition(":")[2])

    def write(self) -> Path:
        (self.root / "plans").mkdir(parents=True, exist_ok=True)
        for name, plan in self.plans.items():
            (self.root / "plans" / f"{name}.yaml").write_text(yaml.safe_dump(plan))
        config: dict[str, Any] = {
            "state_dir": str(self.root / "state"),
            "plans": ["plans/*.yaml"],
            "keys": {"source": "env", "name": "DRD_KEYS"},
            "api": {"listen": self.api_listen, **self.api},
            "regions": self.regions,
        }
        if self.daemon:
            config["daemon"] = self.daemon
        self.config_path.write_text(yaml.safe_dump(config))
        return self.config_path

    def env(self, **overrides: str | None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DRD_")}
        env["DRD_KEYS"] = self.key
        for k, v in overrides.items():
            if v is None:
                env.pop(k, None)
            else:
                env[k] = v
        return env

    def command(self, *args: str, config: bool = True) -> list[str]:
        return [
            sys.executable,
            "-m",
            "drd.cli.main",
            *(["--config", str(self.config_path)] if config else []),
            *args,
        ]

    def run(
        self,
        *args: str,
        config: bool = True,
        env: dict[str, str] | None = None,
        input: str | None = None,
        timeout: float = 120,
    ) -> subprocess.CompletedProcess[str]:
        if not self.config_path.exists():
            self.write()
        return subprocess.run(
            self.command(*args, config=config),
            env=env if env is not None else self.env(),
            cwd=self.root,
            capture_output=True,
            text=True,
            input=input,
            timeout=timeout,
            check=False,
        )

    def ok(self, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        proc = self.run(*args, **kwargs)
        assert proc.returncode == 0, (
            f"drd {' '.join(args)} exited {proc.returncode}\n"
            f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
        )
        return proc

    def backup_id_of(self, proc: subprocess.CompletedProcess[str], ref: str) -> str:
        for line in proc.stdout.splitlines():
            if line.startswith(f"ok {ref}@"):
                return line.split("@", 1)[1].split(":", 1)[0]
        raise AssertionError(f"no backup of {ref} in output:\n{proc.stdout}")

    def stored_files(self) -> list[Path]:
        return sorted(p for p in (self.root / "regions").rglob("*") if p.is_file())
