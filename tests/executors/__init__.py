"""Helpers shared by the executor tests (tests/integration/test_executor_contract.py, test_ray_*, test_slurm_*)."""
