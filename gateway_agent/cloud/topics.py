"""MQTT topic names for one gateway (reference §1, §3). Pure: id, prefix, family."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

ShadowFamily = Literal["aws", "prefixed"]


@dataclass(frozen=True, slots=True)
class Topics:
    gateway_id: str
    prefix: str | None
    shadow_family: ShadowFamily = "aws"

    @property
    def _jobs_base(self) -> str:
        if self.prefix is None:
            raise LookupError(
                "topic prefix not known yet (configure cloud.topic_prefix or wait for the shadow)"
            )
        return f"{self.prefix}{self.gateway_id}/jobs/ble"

    @property
    def job_request(self) -> str:
        return f"{self._jobs_base}/req"

    @property
    def job_receive(self) -> str:
        return f"{self._jobs_base}/rcv"

    @property
    def job_update(self) -> str:
        return f"{self._jobs_base}/update"

    @property
    def _shadow_base(self) -> str:
        if self.shadow_family == "aws":
            return f"$aws/things/{self.gateway_id}/shadow"
        if self.prefix is None:
            raise LookupError("prefixed shadow topics need the topic prefix")
        return f"{self.prefix}{self.gateway_id}/shadow"

    @property
    def shadow_get(self) -> str:
        return f"{self._shadow_base}/get"

    @property
    def shadow_update(self) -> str:
        return f"{self._shadow_base}/update"

    @property
    def shadow_delta(self) -> str:
        return f"{self._shadow_base}/update/delta"

    @property
    def shadow_get_accepted(self) -> tuple[str, ...]:
        """Both answers: the full AWS document and nRF Cloud's trimmed copy without `$aws`."""
        trimmed = f"{self.gateway_id}/shadow/get/accepted"
        return (f"{self._shadow_base}/get/accepted", trimmed)

    def subscriptions(self) -> list[str]:
        subs = [*self.shadow_get_accepted, self.shadow_delta]
        if self.prefix is not None:
            subs.append(self.job_receive)
        return sorted(set(subs))
