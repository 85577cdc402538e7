from mailsync.service import run_service

from .app import setup
from .settings import FetcherSettings

if __name__ == "__main__":
    run_service(FetcherSettings(), setup)
