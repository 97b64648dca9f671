"""A four-service banking mesh (account, transaction, notification, audit) with breakers."""
