"""Pub/Sub: the streaming pull of intents and the publishing of replies and dead letters."""
