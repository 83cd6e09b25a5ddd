"""The daemon as the control API sees it (``campaignd.web.app.ControlPlane``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from campaignd.errors import StorageError

if TYPE_CHECKING:
    from campaignd.daemon import Daemon
    from campaignd.stores.sql.repository import SqlStore


class DaemonPlane:
    """The running daemon as the web layer's ``ControlPlane``: reads its state; changes it
    only through the SQL store's guarded updates (actions) and the supervisor (job runs)."""

    def __init__(self, d: Daemon) -> None:
        self.d = d

    def status(self) -> dict[str, Any]:
        return self.d.status()

    async def campaigns(self) -> list[dict[str, Any]]:
        return await self.d.campaigns_list()

    async def campaign(self, campaign_id: str) -> dict[str, Any] | None:
        return await self.d.campaign(campaign_id)

    def trigger(self, job: str) -> bool:
        return self.d.trigger(job)

    def metrics(self) -> bytes:
        return self.d.metrics.render()

    def check_token(self, token: str) -> bool:
        return self.d.check_token(token)

    def _sql(self) -> SqlStore:
        if self.d.sql is None:
            raise StorageError("the database is not open yet (the daemon is starting)")
        return self.d.sql

    async def actions(self, *, status: str | None, campaign_id: str | None,
                      cell_id: str | None, decision_id: str | None,
                      limit: int) -> dict[str, Any]:
        sql = self._sql()
        rows = await sql.list_actions(status=status, campaign_id=campaign_id, cell_id=cell_id,
                                      decision_id=decision_id, limit=limit)
        return {"actions": [r.as_dict() for r in rows], "counts": await sql.count_actions()}

    async def action(self, action_id: int) -> dict[str, Any] | None:
        row = await self._sql().get_action(action_id)
        return None if row is None else row.as_dict()

    async def decide_action(self, action_id: int, *, approve: bool, actor: str,
                            note: str | None) -> dict[str, Any]:
        row = await self._sql().decide_action(action_id, approve=approve, actor=actor,
                                              now=self.d.clock.now(), note=note)
        if approve and self.d.executor is not None:
            self.d.executor.wake()
        return row.as_dict()

    async def decide_decision(self, decision_id: str, *, approve: bool, actor: str,
                              note: str | None) -> dict[str, Any]:
        rows = await self._sql().decide_decision(decision_id, approve=approve, actor=actor,
                                                 now=self.d.clock.now(), note=note)
        if approve and self.d.executor is not None:
            self.d.executor.wake()
        return {"decision": decision_id, "status": "pending" if approve else "rejected",
                "actions": [r.as_dict() for r in rows]}

    async def undo_action(self, action_id: int, *, actor: str) -> dict[str, Any]:
        row = await self._sql().undo_action(action_id, actor=actor, now=self.d.clock.now())
        if self.d.executor is not None:
            self.d.executor.wake()
        return row.as_dict()


__all__ = ["DaemonPlane"]
