"""The six saga steps, numbered as the design draws them."""

from enum import IntEnum


class Step(IntEnum):
    """A saga step; a failure at step k compensates steps k..1 in reverse order."""

    SELECT = 1
    DISTRIBUTE = 2
    TRAIN = 3
    AGGREGATE = 4
    VALIDATE = 5
    DEPLOY = 6


STEP_NAMES: dict[int, str] = {
    Step.SELECT: "selector",
    Step.DISTRIBUTE: "distributor",
    Step.TRAIN: "trainer_coordinator",
    Step.AGGREGATE: "aggregator",
    Step.VALIDATE: "validator",
    Step.DEPLOY: "deployer",
}
