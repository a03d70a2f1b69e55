from productlens.cli import app

app()
