"""Batched semi-autoregressive decoding engine: what is decoded (``GenerationConfig``), how fast
(``SpeedConfig``), and the one block loop (``generate``)."""

from l2pd_eval.engine.config import EOTP_MODES, EotpMode, GenerationConfig, eotp_mode
from l2pd_eval.engine.generate import check_network_settings, generate
from l2pd_eval.engine.greedy import unmask_most_confident
from l2pd_eval.engine.layout import LeftPadded, left_pad
from l2pd_eval.engine.predict import Predictor
from l2pd_eval.engine.schedule import linear_schedule
from l2pd_eval.engine.speed import SpeedConfig
from l2pd_eval.engine.state import GenerationOutput, RowStats, StepEvent

__all__ = ["EOTP_MODES", "EotpMode", "GenerationConfig", "GenerationOutput", "LeftPadded", "Predictor", "RowStats",
           "SpeedConfig", "StepEvent", "check_network_settings", "eotp_mode", "generate", "left_pad", "linear_schedule",
           "unmask_most_confident"]
