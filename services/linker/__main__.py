from mailsync.service import run_service

from .app import setup
from .settings import LinkerSettings

if __name__ == "__main__":
    run_service(LinkerSettings(), setup)
