from mailsync.service import run_service

from .app import setup
from .settings import SenderSettings

if __name__ == "__main__":
    run_service(SenderSettings(), setup)
