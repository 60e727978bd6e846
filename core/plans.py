"""The plan catalog, read from configuration."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from core.config import PlanSettings
from core.errors import PlanError


class PlanCatalog:
    """Plans by id, in the order the operator listed them."""

    def __init__(self, plans: Mapping[str, PlanSettings]) -> None:
        self._plans = dict(plans)

    def __iter__(self) -> Iterator[PlanSettings]:
        return iter(self._plans.values())

    def __contains__(self, plan_id: object) -> bool:
        return plan_id in self._plans

    def get(self, plan_id: str) -> PlanSettings:
        try:
            return self._plans[plan_id]
        except KeyError:
            raise PlanError(plan_id) from None

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(self._plans)

    def default_byok(self) -> PlanSettings | None:
        return next((p for p in self._plans.values() if p.byok), None)
