"""Converts a CustomResourceDefinition's openAPIV3Schema into the JSON
schema files kubeconform reads, strict: objects that list their properties
refuse others unless the CRD says x-kubernetes-preserve-unknown-fields.

    python3 crd_to_jsonschema.py CRD.yaml OUT_DIR

writes OUT_DIR/<group>/<kind>_<version>.json (lower-case kind), one per
served version, for kubeconform's
-schema-location 'OUT_DIR/{{.Group}}/{{.ResourceKind}}_{{.ResourceAPIVersion}}.json'.
"""

import json
import os
import sys

import yaml


def strict(node):
    if isinstance(node, list):
        return [strict(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = {key: strict(value) for key, value in node.items()}
    if node.pop("x-kubernetes-int-or-string", False):
        rest = {k: v for k, v in node.items() if k not in ("type", "anyOf", "pattern")}
        node = dict(rest, anyOf=[{"type": "string"}, {"type": "integer"}])
    if node.pop("nullable", False) and "type" in node:
        node["type"] = [node["type"], "null"]
    preserve = node.pop("x-kubernetes-preserve-unknown-fields", False)
    for key in [k for k in node if k.startswith("x-kubernetes-")]:
        del node[key]
    if "properties" in node and "additionalProperties" not in node and not preserve:
        node["additionalProperties"] = False
    return node


def main(crd_path, out_dir):
    with open(crd_path) as f:
        crd = yaml.safe_load(f)
    group = crd["spec"]["group"]
    kind = crd["spec"]["names"]["kind"].lower()
    os.makedirs(os.path.join(out_dir, group), exist_ok=True)
    for version in crd["spec"]["versions"]:
        if not version.get("served", True):
            continue
        schema = strict(version["schema"]["openAPIV3Schema"])
        schema["properties"]["apiVersion"] = {"type": "string", "enum": [f"{group}/{version['name']}"]}
        schema["properties"]["kind"] = {"type": "string", "enum": [crd["spec"]["names"]["kind"]]}
        schema["properties"]["metadata"] = {"type": "object"}
        schema["$schema"] = "http://json-schema.org/draft-07/schema#"
        path = os.path.join(out_dir, group, f"{kind}_{version['name']}.json")
        with open(path, "w") as f:
            json.dump(schema, f)
        print(path)


if __name__ == "__main__":
    main(*sys.argv[1:])
