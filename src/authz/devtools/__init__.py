"""Development tools: the Heroku API simulator the demo and the tests run against."""
