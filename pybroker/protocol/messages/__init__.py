"""Message schemas, one module per API family, transcribed from Kafka's JSON specs.

Transcription rules (so a reviewer can diff against the spec):
* field order, types, `versions`, `nullableVersions`, `default`, `tag`,
  `taggedVersions`, `ignorable` and field-level `flexibleVersions` are copied as
  written; names are the spec's names in snake_case;
* `valid_versions` is the range this broker implements (the spec's own range is noted
  in a comment); a field whose versions lie wholly outside that range is left out,
  since no version we speak can carry it.
"""
