"""Optuna storage, below both :mod:`mmvit.study` (which writes a study) and :mod:`mmvit.report`
(which reads one): where a study's files live (:mod:`.paths`), how its database is opened and
kept through outages (:mod:`.connection`, :mod:`.resilient`), and the one module that touches
Optuna's private parts (:mod:`.optuna_adapter`). Nothing here reads a study file or imports
from study, report, training or data (tests/test_layers.py).
"""
