"""The daemon config (drd.yaml) and the DR plans it lists: models, loading and validation.

Everything is loaded through `drd.config.loader.load_config` (raises ConfigError listing every
error) or checked through `drd.config.loader.validate` (returns every error and warning as
findings). Both read the config and every plan completely before they judge, so one run shows
all the mistakes, each as `file:line: field: message`.

How validation is split, by module:
- yamlsource: YAML that keeps the line of every value (and reports duplicate keys, bad tags).
- models: the pydantic models, one per section (Config, Plan and their parts). A model checks
  its own fields, and the rules that relate fields of the same section.
- rules: the rules that relate sections, files, or today's date (schedule vs RPO, plan regions
  vs config regions, restore tests vs sources, unique names, review age), and the warnings.
- guard: a restore test's scratch environment is never its source (also used at run time).
- findings: Finding (`file:line: field: message`), and how YAML problems and pydantic errors
  become findings at the right line, with messages written for operators.
- loader: reads the files, runs models and rules section by section (a mistake in one section
  does not hide mistakes in others), and makes the paths in them absolute.
- raw: looking into what YAML gave before it is validated.
The field types the models share (durations, sizes, names, secret names) are drd.fields.

Secrets: no field holds a key, password or token. Keys come from `keys.source` (env,
credential, stdin) and nothing else; a field that looks like a secret is an error, and a DSN
with an inline password is a warning. Messages never repeat a value that could be a secret.
"""
