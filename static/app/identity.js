// This page's participant key, and the `resume` proofs made with it (docs/PROTOCOL.md,
// section 7): after a rejoin under a new peer id, a page proves to the others that it is the
// one their connections already know, so nobody sets up a second connection. No DOM.

/**
 * Generates this page's participant key (ECDSA P-256), for the life of the page: the others
 * learn its public half over the data channel and recognise this page by it after a rejoin.
 * Resolves to {privateKey, publicJwk}, or null where WebCrypto is missing (pages without HTTPS
 * or localhost); rejects when WebCrypto fails to make one.
 */
export async function createIdentity() {
  if (!crypto.subtle) return null;
  const pair = await crypto.subtle.generateKey({ name: "ECDSA", namedCurve: "P-256" }, false, ["sign", "verify"]);
  const { kty, crv, x, y } = await crypto.subtle.exportKey("jwk", pair.publicKey);
  return { privateKey: pair.privateKey, publicJwk: { kty, crv, x, y } };
}

/** What a `resume` signs: the room and the signer's new peer id, which the server vouches for. */
function resumeStatement(room, peerId) {
  return new TextEncoder().encode(`signpost-resume\n${room}\n${peerId}`);
}

export function isPublicKey(key) {
  return key?.kty === "EC" && key.crv === "P-256" && typeof key.x === "string" && typeof key.y === "string";
}

export function sameKey(a, b) {
  return isPublicKey(a) && isPublicKey(b) && a.x === b.x && a.y === b.y;
}

/** `identity`'s signature (base64url, r‖s) over the statement that it is `peerId` in `room`. */
export async function signResume(identity, room, peerId) {
  const statement = resumeStatement(room, peerId);
  const raw = new Uint8Array(await crypto.subtle.sign({ name: "ECDSA", hash: "SHA-256" }, identity.privateKey, statement));
  return btoa(String.fromCharCode(...raw)).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

/** Whether `signature` (base64url, r‖s) is `key`'s over the statement for `peerId` in `room`. */
export async function verifyResume(key, signature, room, peerId) {
  if (!crypto.subtle || !isPublicKey(key) || typeof signature !== "string") return false;
  try {
    const publicKey = await crypto.subtle.importKey("jwk", { kty: key.kty, crv: key.crv, x: key.x, y: key.y }, { name: "ECDSA", namedCurve: "P-256" }, false, ["verify"]);
    const bytes = Uint8Array.from(atob(signature.replace(/-/g, "+").replace(/_/g, "/")), (c) => c.charCodeAt(0));
    return await crypto.subtle.verify({ name: "ECDSA", hash: "SHA-256" }, publicKey, bytes, resumeStatement(room, peerId));
  } catch {
    return false;
  }
}
