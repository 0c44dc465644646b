"""The Mastodon listener daemon and the local Mastodon-compatible simulator."""
