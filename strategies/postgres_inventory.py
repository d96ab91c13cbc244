"""What a PostgreSQL database holds besides its tables' rows, as comparable inventories: the
objects (functions, triggers, policies, types, domains, views, materialized views, extensions,
...), their owners and privileges (grants), and the database's own properties.

Each inventory is a set of entries `"<what> <qualified name>" -> digest of its definition`,
read by the same queries at backup time (inside the dump's snapshot: drd.strategies.
postgres_stats.collect) and on the restored copy, so that a difference names the object:
"function app.total(integer): different", "policy eu_only on app.accounts: missing". What an
entry covers is the catalog's own rendering of the object (pg_get_functiondef,
pg_get_triggerdef, pg_get_viewdef, pg_get_expr, format_type, ...) with search_path set to
pg_catalog, so names are schema-qualified the same way on both sides. Only digests are kept
(16 hex digits an entry, the manifest is encrypted anyway): a setting's or a comment's value is
never stored. A part lists its entries up to LISTED of them; beyond, its count and its digest
still compare, but a difference cannot name the object.

What is left out, and why:
- objects that belong to an extension: CREATE EXTENSION recreates them (the extension's name,
  schema and version are compared instead);
- the owner of what initdb created (the public schema, plpgsql): in a scratch server it is that
  server's bootstrap superuser; in the privileges of those objects that superuser is written
  `@bootstrap` on both sides;
- the contents of materialized views: a restore recomputes them (REFRESH), it does not copy
  them, so a view that was stale at backup time legitimately differs; whether it is populated
  is compared;
- the options of user mappings (they hold passwords): which options are set is compared.

Soft differences (`soft()`): an extension's version (CREATE EXTENSION installs the scratch
server's default version) and the database's locale (a scratch machine without the source's
locale restores with C, and says so): they warn, they do not fail a restore test.

Requires PostgreSQL 11 or newer on both sides (prokind, pg_sequence); with an older server the
part that cannot be read is recorded as an error.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from drd.strategies.statistics import digest, error_text

#: a part names at most this many entries (about 40 bytes each in the manifest)
LISTED = 5000

# Output settings every read uses, on both sides: the catalog functions qualify names by the
# search_path, and a value's text form depends on these.
READ_SETTINGS = {
    "search_path": "pg_catalog",
    "TimeZone": "UTC",
    "DateStyle": "ISO, YMD",
    "IntervalStyle": "postgres",
    "extra_float_digits": "1",
    "bytea_output": "hex",
    "lc_monetary": "C",
    "jit": "off",
}

USER_NS = r"""n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\_toast%' AND n.nspname NOT LIKE 'pg\_temp\_%'"""


def not_member(catalog: str, oid: str) -> str:
    """SQL: the object (`oid` of `catalog`) does not belong to an extension."""
    return (
        f"NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend x_dep WHERE x_dep.classid = "
        f"'pg_catalog.{catalog}'::regclass AND x_dep.objid = {oid} AND x_dep.deptype = 'e')"
    )


def _role(expr: str, system: str) -> str:
    return (
        f"CASE WHEN {expr} = 0 THEN 'PUBLIC' WHEN {expr} = 10 AND {system} THEN '@bootstrap' "
        f"ELSE pg_catalog.pg_get_userbyid({expr}) END"
    )


def acl(column: str, kind: str, owner: str, system: str = "false") -> str:
    """SQL: an ACL as a sorted JSON list of `grantor grantee privilege [WITH GRANT OPTION]`,
    a NULL ACL written out as the default it stands for (pg_dump writes no GRANT for a
    default, so an explicit default and NULL are the same privileges)."""
    source = f"coalesce({column}, pg_catalog.acldefault('{kind}', {owner}))" if kind else column
    return (
        "(SELECT coalesce(json_agg(x ORDER BY x), '[]') FROM (SELECT concat_ws(' ', "
        f"{_role('a.grantor', system)}, {_role('a.grantee', system)}, a.privilege_type, "
        "CASE WHEN a.is_grantable THEN 'WITH GRANT OPTION' END) AS x "
        f"FROM pg_catalog.aclexplode({source}) a) s)"
    )


def _owner(expr: str, system: str) -> str:
    return f"CASE WHEN {system} THEN NULL ELSE pg_catalog.pg_get_userbyid({expr}) END"


def _option_keys(column: str) -> str:
    return f"ARRAY(SELECT split_part(o, '=', 1) FROM unnest({column}) o ORDER BY 1)"


_RELKIND_WORD = (
    "CASE c.relkind WHEN 'v' THEN 'view ' WHEN 'm' THEN 'materialized view ' "
    "WHEN 'S' THEN 'sequence ' WHEN 'f' THEN 'foreign table ' ELSE 'table ' END"
)

# part -> a query of (entry, definition) rows
PARTS: dict[str, str] = {
    "schemas": f"""
SELECT 'schema ' || quote_ident(n.nspname), ''
FROM pg_namespace n WHERE {USER_NS} AND {not_member("pg_namespace", "n.oid")}
""",
    "functions": f"""
SELECT CASE p.prokind WHEN 'p' THEN 'procedure ' WHEN 'a' THEN 'aggregate ' ELSE 'function '
       END || p.oid::regprocedure::text,
       CASE WHEN p.prokind = 'a' THEN (
           SELECT json_build_array(a.aggkind, a.aggnumdirectargs, a.aggtransfn::text,
                  a.aggfinalfn::text, a.aggcombinefn::text, a.aggserialfn::text,
                  a.aggdeserialfn::text, a.aggmtransfn::text, a.aggminvtransfn::text,
                  a.aggmfinalfn::text, a.aggsortop::regoperator::text,
                  format_type(a.aggtranstype, NULL), a.agginitval,
                  format_type(a.aggmtranstype, NULL), a.aggminitval)::text
           FROM pg_aggregate a WHERE a.aggfnoid = p.oid)
       ELSE pg_get_functiondef(p.oid) END
FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
WHERE {USER_NS} AND {not_member("pg_proc", "p.oid")}
""",
    "triggers": f"""
SELECT 'trigger ' || quote_ident(t.tgname) || ' on ' || c.oid::regclass::text,
       json_build_array(pg_get_triggerdef(t.oid), t.tgenabled)::text
FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE NOT t.tgisinternal AND {USER_NS} AND {not_member("pg_class", "c.oid")}
UNION ALL
SELECT 'event trigger ' || quote_ident(e.evtname),
       json_build_array(e.evtevent, e.evtfoid::regprocedure::text, e.evtenabled,
                        e.evttags)::text
FROM pg_event_trigger e WHERE {not_member("pg_event_trigger", "e.oid")}
""",
    "policies": f"""
SELECT 'policy ' || quote_ident(p.polname) || ' on ' || c.oid::regclass::text,
       json_build_array(p.polcmd, p.polpermissive,
           ARRAY(SELECT CASE WHEN r = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(r) END AS name
                 FROM unnest(p.polroles) r ORDER BY 1),
           pg_get_expr(p.polqual, p.polrelid), pg_get_expr(p.polwithcheck, p.polrelid))::text
FROM pg_policy p JOIN pg_class c ON c.oid = p.polrelid
JOIN pg_namespace n ON n.oid = c.relnamespace WHERE {USER_NS}
UNION ALL
SELECT 'row level security on ' || c.oid::regclass::text,
       json_build_array(c.relrowsecurity, c.relforcerowsecurity)::text
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE (c.relrowsecurity OR c.relforcerowsecurity) AND {USER_NS}
""",
    "types": f"""
SELECT 'type ' || t.oid::regtype::text,
       json_build_array(t.typtype, CASE t.typtype
           WHEN 'e' THEN (SELECT json_agg(e.enumlabel ORDER BY e.enumsortorder)
                          FROM pg_enum e WHERE e.enumtypid = t.oid)
           WHEN 'c' THEN (SELECT json_agg(json_build_array(a.attname,
                                 format_type(a.atttypid, a.atttypmod)) ORDER BY a.attnum)
                          FROM pg_attribute a
                          WHERE a.attrelid = t.typrelid AND a.attnum > 0
                            AND NOT a.attisdropped)
           WHEN 'r' THEN (SELECT json_build_array(format_type(r.rngsubtype, NULL),
                                 (SELECT o.opcname FROM pg_opclass o
                                  WHERE o.oid = r.rngsubopc),
                                 r.rngcanonical::text, r.rngsubdiff::text)
                          FROM pg_range r WHERE r.rngtypid = t.oid)
           ELSE json_build_array(t.typinput::text, t.typoutput::text, t.typreceive::text,
                                 t.typsend::text, t.typlen, t.typbyval, t.typalign,
                                 t.typstorage, t.typcategory)
       END)::text
FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
WHERE {USER_NS} AND t.typtype IN ('b', 'c', 'e', 'r')
  AND (t.typtype <> 'c' OR EXISTS (SELECT 1 FROM pg_class c
                                   WHERE c.oid = t.typrelid AND c.relkind = 'c'))
  AND NOT EXISTS (SELECT 1 FROM pg_type el WHERE el.typarray = t.oid)
  AND {not_member("pg_type", "t.oid")}
""",
    "domains": f"""
SELECT 'domain ' || t.oid::regtype::text,
       json_build_array(format_type(t.typbasetype, t.typtypmod), t.typnotnull, t.typdefault,
           (SELECT co.collname FROM pg_collation co WHERE co.oid = t.typcollation),
           (SELECT json_agg(json_build_array(con.conname, pg_get_constraintdef(con.oid))
                            ORDER BY con.conname)
            FROM pg_constraint con WHERE con.contypid = t.oid))::text
FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
WHERE t.typtype = 'd' AND {USER_NS} AND {not_member("pg_type", "t.oid")}
""",
    "views": f"""
SELECT 'view ' || c.oid::regclass::text,
       json_build_array(pg_get_viewdef(c.oid), c.reloptions)::text
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'v' AND {USER_NS} AND {not_member("pg_class", "c.oid")}
""",
    "materialized views": f"""
SELECT 'materialized view ' || c.oid::regclass::text,
       json_build_array(pg_get_viewdef(c.oid), c.relispopulated, c.reloptions)::text
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'm' AND {USER_NS} AND {not_member("pg_class", "c.oid")}
""",
    "extensions": """
SELECT 'extension ' || quote_ident(e.extname), json_build_array(n.nspname)::text
FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
UNION ALL
SELECT 'extension ' || quote_ident(e.extname) || ' version', e.extversion
FROM pg_extension e
""",
    "sequences": f"""
SELECT 'sequence ' || c.oid::regclass::text,
       json_build_array(format_type(s.seqtypid, NULL), s.seqstart, s.seqincrement, s.seqmax,
                        s.seqmin, s.seqcache, s.seqcycle)::text
FROM pg_sequence s JOIN pg_class c ON c.oid = s.seqrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE {USER_NS} AND {not_member("pg_class", "c.oid")}
""",
    "rules": f"""
SELECT 'rule ' || quote_ident(r.rulename) || ' on ' || c.oid::regclass::text,
       json_build_array(pg_get_ruledef(r.oid), r.ev_enabled)::text
FROM pg_rewrite r JOIN pg_class c ON c.oid = r.ev_class
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE r.rulename <> '_RETURN' AND {USER_NS} AND {not_member("pg_class", "c.oid")}
""",
    "statistics objects": f"""
SELECT 'statistics ' || quote_ident(n.nspname) || '.' || quote_ident(s.stxname),
       pg_get_statisticsobjdef(s.oid)
FROM pg_statistic_ext s JOIN pg_namespace n ON n.oid = s.stxnamespace WHERE {USER_NS}
""",
    "collations": f"""
SELECT 'collation ' || quote_ident(n.nspname) || '.' || quote_ident(co.collname),
       (to_jsonb(co) - ARRAY['oid', 'collname', 'collnamespace', 'collowner',
                             'collversion'])::text
FROM pg_collation co JOIN pg_namespace n ON n.oid = co.collnamespace
WHERE {USER_NS} AND {not_member("pg_collation", "co.oid")}
""",
    "casts": f"""
SELECT 'cast (' || format_type(c.castsource, NULL) || ' AS '
       || format_type(c.casttarget, NULL) || ')',
       json_build_array(c.castfunc::regprocedure::text, c.castcontext, c.castmethod)::text
FROM pg_cast c WHERE c.oid >= 16384 AND {not_member("pg_cast", "c.oid")}
""",
    "operators": f"""
SELECT 'operator ' || o.oid::regoperator::text,
       json_build_array(o.oprcode::text, o.oprcom::regoperator::text,
                        o.oprnegate::regoperator::text, o.oprrest::text, o.oprjoin::text,
                        o.oprcanmerge, o.oprcanhash)::text
FROM pg_operator o JOIN pg_namespace n ON n.oid = o.oprnamespace
WHERE {USER_NS} AND {not_member("pg_operator", "o.oid")}
""",
    "text search": f"""
SELECT 'text search configuration ' || c.oid::regconfig::text,
       json_build_array((SELECT p.prsname FROM pg_ts_parser p WHERE p.oid = c.cfgparser),
           (SELECT json_agg(json_build_array(m.maptokentype, m.mapseqno,
                                             m.mapdict::regdictionary::text)
                            ORDER BY m.maptokentype, m.mapseqno)
            FROM pg_ts_config_map m WHERE m.mapcfg = c.oid))::text
FROM pg_ts_config c JOIN pg_namespace n ON n.oid = c.cfgnamespace
WHERE {USER_NS} AND {not_member("pg_ts_config", "c.oid")}
UNION ALL
SELECT 'text search dictionary ' || d.oid::regdictionary::text,
       json_build_array((SELECT t.tmplname FROM pg_ts_template t
                         WHERE t.oid = d.dicttemplate), d.dictinitoption)::text
FROM pg_ts_dict d JOIN pg_namespace n ON n.oid = d.dictnamespace
WHERE {USER_NS} AND {not_member("pg_ts_dict", "d.oid")}
""",
    "publications": """
SELECT 'publication ' || quote_ident(p.pubname),
       json_build_array(p.puballtables, p.pubinsert, p.pubupdate, p.pubdelete,
                        p.pubtruncate,
                        ARRAY(SELECT r.prrelid::regclass::text FROM pg_publication_rel r
                              WHERE r.prpubid = p.oid ORDER BY 1))::text
FROM pg_publication p
""",
    "foreign data": f"""
SELECT 'foreign data wrapper ' || quote_ident(w.fdwname),
       json_build_array(w.fdwhandler::text, w.fdwvalidator::text, w.fdwoptions)::text
FROM pg_foreign_data_wrapper w WHERE {not_member("pg_foreign_data_wrapper", "w.oid")}
UNION ALL
SELECT 'server ' || quote_ident(s.srvname),
       json_build_array(w.fdwname, s.srvtype, s.srvversion, s.srvoptions)::text
FROM pg_foreign_server s JOIN pg_foreign_data_wrapper w ON w.oid = s.srvfdw
WHERE {not_member("pg_foreign_server", "s.oid")}
UNION ALL
SELECT 'user mapping for ' || CASE WHEN u.umuser = 0 THEN 'PUBLIC'
                                   ELSE quote_ident(u.usename) END
       || ' server ' || quote_ident(u.srvname),
       json_build_array({_option_keys("u.umoptions")})::text
FROM pg_user_mappings u
UNION ALL
SELECT 'foreign table ' || c.oid::regclass::text,
       json_build_array(s.srvname, f.ftoptions)::text
FROM pg_foreign_table f JOIN pg_class c ON c.oid = f.ftrelid
JOIN pg_foreign_server s ON s.oid = f.ftserver
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE {USER_NS} AND {not_member("pg_class", "c.oid")}
""",
    "comments": """
SELECT what, text FROM (
    SELECT pg_describe_object(d.classoid, d.objoid, d.objsubid) AS what, d.description AS text
    FROM pg_description d
    WHERE d.objoid >= 16384
      AND NOT EXISTS (SELECT 1 FROM pg_depend e WHERE e.classid = d.classoid
                      AND e.objid = d.objoid AND e.deptype = 'e')
    UNION ALL
    SELECT 'security label (' || l.provider || ') on '
           || pg_describe_object(l.classoid, l.objoid, l.objsubid), l.label
    FROM pg_seclabel l WHERE l.objoid >= 16384
) s WHERE what IS NOT NULL
""",
}

_SYSTEM = "{oid} < 16384"


def _grants_sql() -> str:
    rel_system = "false"
    ns_system = _SYSTEM.format(oid="n.oid")
    lan_system = f"(l.oid < 16384 OR NOT {not_member('pg_language', 'l.oid')})"
    return f"""
SELECT 'schema ' || quote_ident(n.nspname),
       json_build_array({_owner("n.nspowner", ns_system)},
                        {acl("n.nspacl", "n", "n.nspowner", ns_system)})::text
FROM pg_namespace n WHERE {USER_NS} AND {not_member("pg_namespace", "n.oid")}
UNION ALL
SELECT {_RELKIND_WORD} || c.oid::regclass::text,
       json_build_array(pg_get_userbyid(c.relowner),
           CASE WHEN c.relkind = 'S' THEN {acl("c.relacl", "s", "c.relowner", rel_system)}
                ELSE {acl("c.relacl", "r", "c.relowner", rel_system)} END)::text
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f') AND {USER_NS}
  AND {not_member("pg_class", "c.oid")}
UNION ALL
SELECT 'column ' || quote_ident(a.attname) || ' of ' || c.oid::regclass::text,
       {acl("a.attacl", "", "c.relowner", rel_system)}::text
FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE a.attnum > 0 AND NOT a.attisdropped AND a.attacl IS NOT NULL
  AND cardinality(a.attacl) > 0 AND {USER_NS} AND {not_member("pg_class", "c.oid")}
UNION ALL
SELECT CASE p.prokind WHEN 'p' THEN 'procedure ' WHEN 'a' THEN 'aggregate ' ELSE 'function '
       END || p.oid::regprocedure::text,
       json_build_array(pg_get_userbyid(p.proowner),
                        {acl("p.proacl", "f", "p.proowner")})::text
FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
WHERE {USER_NS} AND {not_member("pg_proc", "p.oid")}
UNION ALL
SELECT 'type ' || t.oid::regtype::text,
       json_build_array(pg_get_userbyid(t.typowner),
                        {acl("t.typacl", "T", "t.typowner")})::text
FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
WHERE {USER_NS} AND t.typtype IN ('b', 'c', 'd', 'e', 'r')
  AND (t.typtype <> 'c' OR EXISTS (SELECT 1 FROM pg_class c
                                   WHERE c.oid = t.typrelid AND c.relkind = 'c'))
  AND NOT EXISTS (SELECT 1 FROM pg_type el WHERE el.typarray = t.oid)
  AND {not_member("pg_type", "t.oid")}
UNION ALL
SELECT 'language ' || quote_ident(l.lanname),
       json_build_array({_owner("l.lanowner", lan_system)},
                        {acl("l.lanacl", "l", "l.lanowner", lan_system)})::text
FROM pg_language l WHERE l.lanispl
UNION ALL
SELECT 'foreign data wrapper ' || quote_ident(w.fdwname),
       json_build_array(pg_get_userbyid(w.fdwowner),
                        {acl("w.fdwacl", "F", "w.fdwowner")})::text
FROM pg_foreign_data_wrapper w WHERE {not_member("pg_foreign_data_wrapper", "w.oid")}
UNION ALL
SELECT 'server ' || quote_ident(s.srvname),
       json_build_array(pg_get_userbyid(s.srvowner),
                        {acl("s.srvacl", "S", "s.srvowner")})::text
FROM pg_foreign_server s WHERE {not_member("pg_foreign_server", "s.oid")}
UNION ALL
SELECT 'large object ' || m.oid::text,
       json_build_array(pg_get_userbyid(m.lomowner),
                        {acl("m.lomacl", "L", "m.lomowner")})::text
FROM pg_largeobject_metadata m
UNION ALL
SELECT 'default privileges of ' || pg_get_userbyid(d.defaclrole)
       || coalesce(' in schema ' || quote_ident(n.nspname), '') || ' on '
       || CASE d.defaclobjtype WHEN 'r' THEN 'tables' WHEN 'S' THEN 'sequences'
               WHEN 'f' THEN 'functions' WHEN 'T' THEN 'types' WHEN 'n' THEN 'schemas'
               ELSE d.defaclobjtype::text END,
       {acl("d.defaclacl", "", "d.defaclrole")}::text
FROM pg_default_acl d LEFT JOIN pg_namespace n ON n.oid = d.defaclnamespace
UNION ALL
SELECT 'publication ' || quote_ident(p.pubname), pg_get_userbyid(p.pubowner)
FROM pg_publication p
UNION ALL
SELECT 'event trigger ' || quote_ident(e.evtname), pg_get_userbyid(e.evtowner)
FROM pg_event_trigger e WHERE {not_member("pg_event_trigger", "e.oid")}
UNION ALL
SELECT 'text search configuration ' || c.oid::regconfig::text, pg_get_userbyid(c.cfgowner)
FROM pg_ts_config c JOIN pg_namespace n ON n.oid = c.cfgnamespace
WHERE {USER_NS} AND {not_member("pg_ts_config", "c.oid")}
UNION ALL
SELECT 'text search dictionary ' || d.oid::regdictionary::text, pg_get_userbyid(d.dictowner)
FROM pg_ts_dict d JOIN pg_namespace n ON n.oid = d.dictnamespace
WHERE {USER_NS} AND {not_member("pg_ts_dict", "d.oid")}
"""


GRANTS_SQL = _grants_sql()

_DATABASE_SQL = f"""
SELECT pg_encoding_to_char(d.encoding), d.datcollate, d.datctype, d.datconnlimit,
       d.datistemplate, pg_get_userbyid(d.datdba), shobj_description(d.oid, 'pg_database'),
       {acl("d.datacl", "d", "d.datdba")}::text, {{locale}}
FROM pg_database d WHERE d.datname = current_database()
"""
_SETTINGS_SQL = """
SELECT CASE WHEN s.setrole = 0 THEN NULL ELSE pg_get_userbyid(s.setrole) END, c.setting
FROM pg_db_role_setting s CROSS JOIN LATERAL unnest(s.setconfig) AS c(setting)
WHERE s.setdatabase = (SELECT oid FROM pg_database WHERE datname = current_database())
"""
_LABELS_SQL = """
SELECT l.provider, l.label FROM pg_shseclabel l
WHERE l.classoid = 'pg_catalog.pg_database'::regclass
  AND l.objoid = (SELECT oid FROM pg_database WHERE datname = current_database())
"""

#: the database entries that belong to owners and privileges (left out when a scratch restore
#: drops them: `owners: drop`)
OWNER_ENTRIES = ("owner", "acl")
OWNER_PREFIX = "role "


def entry_digest(value: Any) -> str:
    return hashlib.sha256(("" if value is None else str(value)).encode()).hexdigest()[:16]


def part_of(rows: list[tuple[Any, Any]]) -> dict[str, Any]:
    """An inventory part from its (entry, definition) rows (module docstring)."""
    entries: dict[str, str] = {}
    for key, value in rows:
        name = str(key)
        while name in entries:  # never expected; kept apart rather than merged
            name += "'"
        entries[name] = entry_digest(value)
    return {
        "count": len(entries),
        "digest": digest(sorted(entries.items())),
        "objects": dict(sorted(entries.items())) if len(entries) <= LISTED else None,
    }


@contextlib.asynccontextmanager
async def reading(conn: Any) -> AsyncIterator[None]:
    """A savepoint (or, on an autocommit connection, a transaction) that is rolled back at the
    end, with READ_SETTINGS in force inside it: nothing a read sets outlives it."""
    async with conn.transaction(force_rollback=True):
        names = list(READ_SETTINGS)
        calls = ", ".join("pg_catalog.set_config(%s, %s, true)" for _ in names)
        params = [v for name in names for v in (name, READ_SETTINGS[name])]
        await conn.execute(f"SELECT {calls}", params)
        yield


async def _rows(conn: Any, query: str) -> list[tuple[Any, Any]]:
    cur = await conn.execute(query)
    return [(row[0], row[1]) for row in await cur.fetchall()]


async def inventory(conn: Any) -> dict[str, Any]:
    """Every part of PARTS; a part that cannot be read is {"error": ...} (the others are kept)."""
    import psycopg

    out: dict[str, Any] = {}
    async with reading(conn):
        for part, query in PARTS.items():
            try:
                async with conn.transaction(force_rollback=True):
                    out[part] = part_of(await _rows(conn, query))
            except psycopg.Error as exc:
                out[part] = {"error": error_text(exc)}
    return out


async def grants(conn: Any) -> dict[str, Any]:
    """Owners and privileges of the database's objects, as one part."""
    async with reading(conn):
        return part_of(await _rows(conn, GRANTS_SQL))


async def database_properties(conn: Any) -> dict[str, Any]:
    """The database's own properties (owner, ACL, comment, connection limit, template flag,
    settings, per-role settings, security labels, encoding and locale), as one part."""
    async with reading(conn):
        cur = await conn.execute("SELECT current_setting('server_version_num')::int")
        row = await cur.fetchone()
        version = int(row[0]) if row else 0
        locale = "NULL::text, NULL::text"
        if version >= 170000:
            locale = "d.datlocprovider::text, d.datlocale"
        elif version >= 150000:
            locale = "d.datlocprovider::text, d.daticulocale"
        cur = await conn.execute(_DATABASE_SQL.format(locale=locale))
        found = await cur.fetchone()
        assert found is not None
        encoding, collate, ctype, limit, template, owner, comment, acl_text, provider, icu = found
        rows: list[tuple[Any, Any]] = [
            ("encoding", encoding),
            ("locale lc_collate", collate),
            ("locale lc_ctype", ctype),
            ("locale provider", provider),
            ("locale icu", icu),
            ("connection limit", limit),
            ("template", template),
            ("owner", owner),
            ("comment", comment),
            ("acl", acl_text),
        ]
        for role, setting in await _rows(conn, _SETTINGS_SQL):
            name, _, value = str(setting).partition("=")
            key = f"setting {name}" if role is None else f"{OWNER_PREFIX}{role} setting {name}"
            rows.append((key, value))
        for provider_name, label in await _rows(conn, _LABELS_SQL):
            rows.append((f"security label ({provider_name})", label))
        return part_of(rows)


# ---------------------------------------------------------------------------------------------
# Comparing


@dataclass(frozen=True)
class Difference:
    part: str
    entry: str
    #: missing (at backup time, not in the copy), unexpected (only in the copy), different
    how: str
    #: a soft difference warns (module docstring)
    soft: bool

    def __str__(self) -> str:
        return f"{self.entry}: {self.how}"


def soft(part: str, entry: str) -> bool:
    """Whether a difference in this entry is a warning only (module docstring)."""
    if part == "extensions":
        return entry.endswith(" version")
    if part == "database":
        return entry.startswith("locale ")
    return False


def differences(
    part: str,
    expected: Mapping[str, Any],
    actual: Mapping[str, Any],
    keep: Callable[[str], bool] = lambda _entry: True,
) -> list[Difference] | None:
    """The entries of one part that differ, named; None when the parts differ but neither
    names its entries (more than LISTED); [] when they match. `keep` leaves entries out."""
    want, got = expected.get("objects"), actual.get("objects")
    if isinstance(want, Mapping) and isinstance(got, Mapping):
        out: list[Difference] = []
        for entry in sorted(set(want) | set(got)):
            if not keep(entry):
                continue
            if entry not in got:
                how = "missing"
            elif entry not in want:
                how = "unexpected"
            elif want[entry] != got[entry]:
                how = "different"
            else:
                continue
            out.append(Difference(part, entry, how, soft(part, entry)))
        return out
    if expected.get("digest") == actual.get("digest"):
        return []
    return None
