"""Helpers of :class:`hf_soup.SoupCallback`: harvesting checkpoints and scoring with a Trainer."""
