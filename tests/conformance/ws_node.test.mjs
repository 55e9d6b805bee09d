// `node --test tests/conformance/` only picks up names like *.test.mjs, not
// test_*.mjs; this shim makes that command run test_ws_node.mjs.
import './test_ws_node.mjs';
