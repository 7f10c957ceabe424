"""A message PostgreSQL refuses every time, as a bug or bad data would make it."""

import asyncpg

_REFUSE_POISON = """
CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.dispatch_id = 'poison' THEN RAISE EXCEPTION 'refusing the poison message'; END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER refuse_poison BEFORE INSERT OR UPDATE ON messages
    FOR EACH ROW EXECUTE FUNCTION refuse_poison();
"""


async def refuse_poison(postgres_url: str) -> None:
    """From now on the store fails to write the message whose dispatch id is 'poison'
    (its tables must exist: open the store first)."""
    database = await asyncpg.connect(postgres_url)
    try:
        await database.execute(_REFUSE_POISON)
    finally:
        await database.close()
