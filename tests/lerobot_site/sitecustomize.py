"""TESTS ONLY: a LeRobot CLI started with PYTHONPATH=tests/lerobot_site imports torchvision on this
machine's CPU torch (see torchvision_workaround.py)."""
import torchvision_workaround

torchvision_workaround.import_torchvision()
