"""FastAPI dependency aliases shared by the routes."""

from __future__ import annotations

import threading
from typing import Annotated

from fastapi import Depends, Request
from lrtune.service.settings import Settings
from lrtune.service.store import Store

_STORE_LOCK = threading.Lock()


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_store(request: Request) -> Store:
    """The app's store, made on first use: building the app opens no database connection."""
    store: Store | None = request.app.state.store
    if store is None:
        with _STORE_LOCK:
            store = request.app.state.store
            if store is None:
                store = Store.from_settings(request.app.state.settings)
                request.app.state.store = store
    return store


SettingsDep = Annotated[Settings, Depends(get_settings)]
StoreDep = Annotated[Store, Depends(get_store)]
