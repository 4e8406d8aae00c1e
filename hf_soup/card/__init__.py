"""The soup's model card: metadata for the Hub and a README that says how the soup was made."""

from .metadata import card_data
from .render import card_edited, default_template, is_default_card, render_card, write_card

__all__ = ["card_data", "card_edited", "default_template", "is_default_card", "render_card", "write_card"]
