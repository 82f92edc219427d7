"""Firestore: the layout, idempotency claims, configuration, activity and the books."""
