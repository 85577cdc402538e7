from mailsync.service import run_service

from .app import setup
from .settings import JanitorSettings

if __name__ == "__main__":
    run_service(JanitorSettings(), setup)
