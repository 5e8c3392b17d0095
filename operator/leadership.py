"""One active operator among replicas: a coordination.k8s.io Lease, as controller-runtime does.

kopf's own peering pauses every operator whose priority equals another's (two replicas of one pod
template do), so the Deployment's replicas elect through a Lease instead and only the holder runs
kopf. Taking over is a merge patch carrying the observed resourceVersion, which the API server
refuses (409) when another replica changed the Lease first.
"""
from __future__ import annotations

import asyncio
import datetime
import logging
from typing import Any, Callable, Mapping

from kubernetes_asyncio.client.exceptions import ApiException

from evstore.operator.kube import Kube

log = logging.getLogger("evstore.operator.leadership")


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _format(moment: datetime.datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse(text: str | None) -> datetime.datetime | None:
    if not text:
        return None
    for pattern in ("%Y-%m-%dT%H:%M:%S.%fZ", "%Y-%m-%dT%H:%M:%SZ"):
        try:
            return datetime.datetime.strptime(text, pattern).replace(tzinfo=datetime.UTC)
        except ValueError:
            continue
    return None


def held_by_other(lease: Mapping[str, Any], identity: str, now: datetime.datetime) -> bool:
    spec = lease.get("spec") or {}
    holder = spec.get("holderIdentity")
    renewed = _parse(spec.get("renewTime"))
    if not holder or holder == identity or renewed is None:
        return False
    return renewed + datetime.timedelta(seconds=int(spec.get("leaseDurationSeconds") or 0)) > now


class LeaseElector:
    def __init__(self, kube: Kube, namespace: str, name: str, identity: str, *, duration: float = 15.0,
                 renew_every: float = 5.0, now: Callable[[], datetime.datetime] = _now) -> None:
        self.kube, self.namespace, self.name, self.identity = kube, namespace, name, identity
        self.duration, self.renew_every, self.now = duration, renew_every, now

    def _spec(self, *, acquired: bool, transitions: int) -> dict[str, Any]:
        moment = _format(self.now())
        spec: dict[str, Any] = {"holderIdentity": self.identity, "leaseDurationSeconds": max(1, round(self.duration)),
                                "renewTime": moment}
        if acquired:
            spec.update(acquireTime=moment, leaseTransitions=transitions)
        return spec

    async def try_acquire(self) -> bool:
        """One attempt: True when this replica holds the Lease afterwards."""
        lease = await self.kube.get("Lease", self.namespace, self.name)
        if lease is None:
            try:
                await self.kube.create({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                                        "metadata": {"name": self.name, "namespace": self.namespace},
                                        "spec": self._spec(acquired=True, transitions=0)})
                return True
            except ApiException as exc:
                if exc.status == 409:
                    return False
                raise
        if held_by_other(lease, self.identity, self.now()):
            return False
        spec = lease.get("spec") or {}
        mine = spec.get("holderIdentity") == self.identity
        transitions = int(spec.get("leaseTransitions") or 0) + (0 if mine else 1)
        try:
            await self.kube.patch("Lease", self.namespace, self.name, {
                "metadata": {"resourceVersion": lease["metadata"]["resourceVersion"]},
                "spec": self._spec(acquired=not mine, transitions=transitions)})
        except ApiException as exc:
            if exc.status == 409:
                return False
            raise
        return True

    async def acquire(self) -> None:
        """Wait until this replica holds the Lease."""
        announced = False
        while not await self.try_acquire():
            if not announced:
                log.info("operator %s is on standby: another replica holds lease %s", self.identity, self.name)
                announced = True
            await asyncio.sleep(self.renew_every)
        log.info("operator %s holds lease %s and becomes active", self.identity, self.name)

    async def hold(self) -> None:
        """Renew until a renewal fails for longer than the lease lasts (another replica may then take
        over); returns when leadership is lost."""
        last = self.now()
        while True:
            await asyncio.sleep(self.renew_every)
            try:
                if await self.try_acquire():
                    last = self.now()
                    continue
                log.warning("operator %s lost lease %s to another replica", self.identity, self.name)
                return
            except (ApiException, OSError, asyncio.TimeoutError) as exc:
                log.warning("operator %s could not renew lease %s: %s", self.identity, self.name, exc)
            if (self.now() - last).total_seconds() > self.duration - self.renew_every:
                log.warning("operator %s gives up lease %s (not renewed in time)", self.identity, self.name)
                return
