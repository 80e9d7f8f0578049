"""The six saga services and the small runtime they share."""
