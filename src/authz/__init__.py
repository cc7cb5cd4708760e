"""authz: the authorization service of a Heroku add-on partner."""

__version__ = "0.1.0"
