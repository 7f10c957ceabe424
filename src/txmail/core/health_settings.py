"""Part of the rules file's one schema (``rules_file.py``): its ``[health]`` table, and
``delivery_timeout`` (a duration or "auto") of ``[tracking]`` and its campaigns, read
once by ``txmail.cli`` for the workers and ``txmail check-config`` alike
(workers/health/ judges health and learns timeouts).
"""

from datetime import timedelta
from typing import Any, ClassVar, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    PrivateAttr,
    ValidationError,
    model_validator,
)
from pydantic_core import InitErrorDetails

from txmail.core.durations import PositiveWrittenDuration


class HealthRules(BaseModel):
    """When Braze counts as degraded, and as recovered (defaults: see the README)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # The figures are taken over the sends settled (delivered, failed, timed out) in
    # the last ``window`` on Braze's clock.
    window: PositiveWrittenDuration = timedelta(minutes=5)
    # Fewer sends than this in the window: no judgement either way.
    min_sends: int = Field(default=20, ge=1)
    degraded_p95: PositiveWrittenDuration = timedelta(minutes=1)
    degraded_timeout_rate: float = Field(default=0.05, gt=0, le=1)
    # Recovered once both are at or under these for ``recover_after`` without a break.
    recovered_p95: PositiveWrittenDuration = timedelta(seconds=20)
    recovered_timeout_rate: float = Field(default=0.01, ge=0, le=1)
    recover_after: PositiveWrittenDuration = timedelta(minutes=5)

    @model_validator(mode="after")
    def _recovering_is_lower(self) -> Self:
        # Equal thresholds would let noise around them flap between the two.
        if self.recovered_p95 >= self.degraded_p95:
            raise ValueError("recovered_p95 must be lower than degraded_p95")
        if self.recovered_timeout_rate >= self.degraded_timeout_rate:
            raise ValueError("recovered_timeout_rate must be lower than degraded_timeout_rate")
        return self


class AutoBounds(BaseModel):
    """``min_delivery_timeout`` and ``max_delivery_timeout`` of a learned timeout."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min: PositiveWrittenDuration = timedelta(minutes=1)
    max: PositiveWrittenDuration = timedelta(hours=1)

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.min > self.max:
            raise ValueError("min_delivery_timeout must not be longer than max_delivery_timeout")
        return self

    def clamp(self, value: timedelta) -> timedelta:
        return max(self.min, min(self.max, value))


class TimeoutSetting(BaseModel):
    """``delivery_timeout`` of ``[tracking]`` or of a campaign: a duration, or "auto" with
    optional ``min_delivery_timeout`` and ``max_delivery_timeout``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    delivery_timeout: PositiveWrittenDuration | None = None
    min_delivery_timeout: PositiveWrittenDuration | None = None
    max_delivery_timeout: PositiveWrittenDuration | None = None
    # delivery_timeout = "auto", read apart so that a wrong duration is told as one.
    _auto: bool = PrivateAttr(default=False)
    # A campaign's table is there to say its timeout; [tracking] may leave it out.
    timeout_required: ClassVar[bool] = False

    @model_validator(mode="wrap")
    @classmethod
    def _auto_or_a_duration(cls, data: Any, handler: ModelWrapValidatorHandler[Self]) -> Self:
        auto = isinstance(data, dict) and data.get("delivery_timeout") == "auto"
        if cls.timeout_required and isinstance(data, dict) and "delivery_timeout" not in data:
            missing = InitErrorDetails(type="missing", loc=("delivery_timeout",), input=data)
            raise ValidationError.from_exception_data(cls.__name__, [missing])
        if auto:
            data = {key: value for key, value in data.items() if key != "delivery_timeout"}
        setting = handler(data)
        setting._auto = auto
        bounded = setting.min_delivery_timeout or setting.max_delivery_timeout
        if bounded and not auto:
            raise ValueError('min/max_delivery_timeout go with delivery_timeout = "auto"')
        if auto:
            setting.bounds()  # says when min > max
        return setting

    @property
    def is_auto(self) -> bool:
        return self._auto

    def fixed(self) -> timedelta | None:
        return self.delivery_timeout

    def bounds(self) -> AutoBounds:
        given = {"min": self.min_delivery_timeout, "max": self.max_delivery_timeout}
        return AutoBounds.model_validate({k: v for k, v in given.items() if v is not None})


class CampaignTimeoutSetting(TimeoutSetting):
    """``[tracking.campaigns."<id>"]``: ``delivery_timeout`` is required."""

    timeout_required: ClassVar[bool] = True
