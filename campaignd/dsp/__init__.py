"""DSP adapters: the interface (``base``) and Beeswax (``beeswax``); the sandbox lives in
``campaignd.dsp.sandbox``."""

from campaignd.dsp.base import (
    AdapterHealth,
    Advertiser,
    Campaign,
    Creative,
    CreativeSpec,
    DSPAdapter,
    EventBatch,
    LineItem,
    LineItemSpec,
    Targeting,
)

__all__ = ["AdapterHealth", "Advertiser", "Campaign", "Creative", "CreativeSpec", "DSPAdapter",
           "EventBatch", "LineItem", "LineItemSpec", "Targeting"]
