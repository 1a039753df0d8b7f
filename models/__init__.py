"""Inference: engines, the job protocol, the worker process, the Lagent agent and XComposer."""
