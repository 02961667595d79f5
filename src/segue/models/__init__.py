"""Model families; each implements segue.models.base.Recommender."""
