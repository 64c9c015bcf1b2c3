# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""Test-only stdout callback: prints every task result, diff included, as one JSON document at the end."""

from __future__ import annotations

import json

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = r"""
name: result_json
type: stdout
short_description: Print task results as JSON (tests only)
description:
  - Collects each host's result per task, with its diff, and prints them as one JSON list when the run ends.
"""


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "stdout"
    CALLBACK_NAME = "result_json"

    def __init__(self) -> None:
        super().__init__()
        self.results: list[dict] = []

    def _record(self, result, status: str) -> None:
        data = dict(result._result)  # pylint: disable=protected-access
        data["_status"] = status
        data["_host"] = result._host.get_name()  # pylint: disable=protected-access
        data["_task"] = result._task.get_name()  # pylint: disable=protected-access
        self.results.append(data)

    def v2_runner_on_ok(self, result) -> None:
        self._record(result, "ok")

    def v2_runner_on_failed(self, result, ignore_errors=False) -> None:
        self._record(result, "failed")

    def v2_runner_on_unreachable(self, result) -> None:
        self._record(result, "unreachable")

    def v2_playbook_on_stats(self, stats) -> None:
        self._display.display(json.dumps(self.results, default=str))
