"""The home server: sessions, presence, subscriptions and delivery."""
