"""Evaluation: judges and scores for generated images."""

from .shapes_judge import JudgeResult, judge_shape, matches

__all__ = ["JudgeResult", "judge_shape", "matches"]
