"""`make load`: one `tsunagi serve` on PostgreSQL and Redis under open-loop load, against a bare FastAPI
endpoint under the same uvicorn settings (the ceiling). ``python -m tests.load --help`` for the knobs.

- ``fake.py``: the fake LINE API of the tests (tests/fake_line.py) in a process of its own, which also
  records when each reply arrives and takes reply tokens over a control path;
- ``bare.py``: the bare endpoint, started through ``tsunagi serve``'s own ``uvicorn.run`` call;
- ``driver.py``: the open-loop webhook driver and the web chat sessions (asyncio + aiohttp);
- ``profile.py``: py-spy over one rate, summed by library;
- ``run.py``: the run itself and its report.
"""
