"""placeholder"""

def seed(engine, **kw):
    raise NotImplementedError
