"""turbo-serve: a warm server with OpenAI's and AUTOMATIC1111's image APIs and a realtime page.

`turbo_runtime.serve.app.create_app` builds the app; it needs the serve extra (FastAPI, uvicorn).
"""
