# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""The project's vcsim for tests and benchmarks: build it (scripts/vcsim/build.sh), start it on a free port, stop it.

    python tests/lab/vcsim.py [--vm N] [--trace]     # start one in the foreground, print its env file

Each Vcsim is a fresh inventory (DC0_H0_VM0, DC0_H0_VM1, DC0_C0_RP0_VM0, ... with 2 VMs per pool by default).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import typing as t

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_BINARY: list[str] = []


def build() -> str:
    """Return the path of the cached vcsim binary, building it first when the sources changed."""
    if not _BINARY:
        proc = subprocess.run([os.path.join(ROOT, "scripts", "vcsim", "build.sh")], capture_output=True, text=True,
                              check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"scripts/vcsim/build.sh failed:\n{proc.stderr}")
        _BINARY.append(proc.stdout.strip().splitlines()[-1])
    return _BINARY[0]


class Vcsim:
    """One running simulator. Use as a context manager, or call stop()."""

    def __init__(self, vms_per_pool: int = 2, trace: bool = False, extra: t.Sequence[str] = ()) -> None:
        self.dir = tempfile.mkdtemp(prefix="vmsafe-vcsim-")
        env_file = os.path.join(self.dir, "env")
        self.log_path = os.path.join(self.dir, "vcsim.log")
        cmd = [build(), "-l", "127.0.0.1:0", "-E", env_file, "-vm", str(vms_per_pool), *extra]
        if trace:
            cmd.append("-trace")
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)  # pylint: disable=consider-using-with
        deadline = time.monotonic() + 60
        while not os.path.exists(env_file):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                with open(self.log_path, encoding="utf-8", errors="replace") as handle:
                    raise RuntimeError(f"vcsim did not start:\n{handle.read()[-3000:]}")
            time.sleep(0.02)
        with open(env_file, encoding="utf-8") as handle:
            self.env = dict(line.split("=", 1) for line in handle.read().split())
        self.host = self.env["VCSIM_HOST"]
        self.port = int(self.env["VCSIM_PORT"])
        self.username = self.env["VCSIM_USERNAME"]
        self.password = self.env["VCSIM_PASSWORD"]

    def module_args(self, **kwargs: t.Any) -> dict[str, t.Any]:
        """Connection options for vmsafe.protect modules; TLS verification is turned off explicitly (self-signed)."""
        args = {"hypervisor": "vmware", "hostname": self.host, "port": self.port, "username": self.username,
                "password": self.password, "validate_certs": False}
        args.update(kwargs)
        return args

    def connect(self) -> t.Any:
        """A pyVmomi ServiceInstance, for the tests' own checks and set-up."""
        from pyVim.connect import SmartConnect  # pylint: disable=import-outside-toplevel

        return SmartConnect(host=self.host, port=self.port, user=self.username, pwd=self.password,
                            disableSslCertValidation=True)

    def log(self) -> str:
        with open(self.log_path, encoding="utf-8", errors="replace") as handle:
            return handle.read()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> Vcsim:
        return self

    def __exit__(self, *exc: t.Any) -> None:
        self.stop()


if __name__ == "__main__":
    sim = Vcsim(vms_per_pool=int(sys.argv[sys.argv.index("--vm") + 1]) if "--vm" in sys.argv else 2,
                trace="--trace" in sys.argv)
    print("\n".join(f"{k}={v}" for k, v in sim.env.items()), flush=True)
    signal.signal(signal.SIGTERM, lambda _sig, _frame: sim.stop())
    try:
        sim.proc.wait()
    except KeyboardInterrupt:
        sim.stop()
