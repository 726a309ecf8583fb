"""Executors run clients' local training for the server (see ``fl.executors.base``)."""

from fl.executors.base import ClientResult, ClientTask, Executor
from fl.executors.serial import SerialExecutor

__all__ = ["ClientResult", "ClientTask", "Executor", "SerialExecutor"]
