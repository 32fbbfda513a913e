// The lobby: the form that opens a room (with a fresh room key for a new one), and what to tell
// a person whose join was refused.

import { Signpost } from "../signpost.js";

const $ = (id) => document.getElementById(id);

/** The empty lobby: the page opened without a room. */
export function showLobby() {
  fillLobby({ room: "", name: "", media: "video" });
}

/** The lobby after a refused join: the same form, with what was asked filled in, and why. */
export function showRefusedJoin({ room, name, media }, error) {
  $("lobby-error").textContent = joinRefusal(room, error);
  fillLobby({ room, name, media });
}

/** Makes the lobby's form join: to the room page, with a fresh room key for a new room. */
function installLobby() {
  $("join-form").onsubmit = (event) => {
    event.preventDefault();
    const form = new FormData(event.target);
    const next = new URLSearchParams({ room: form.get("room") });
    if (form.get("name")) next.set("name", form.get("name"));
    if (form.get("media") !== "video") next.set("media", form.get("media"));
    // A new room gets a fresh room key, in the fragment: only those given the link can read its
    // signaling. The same key must reach the others, so they join with the shared link.
    const encrypt = form.get("encrypt") === "on" && Boolean(globalThis.crypto?.subtle);
    const hash = encrypt ? `#${new URLSearchParams({ key: Signpost.newRoomKey() })}` : "";
    location.assign(`${location.pathname}?${next}${hash}`);
  };
}

function fillLobby({ room, name, media }) {
  const form = $("join-form");
  form.room.value = room;
  form.name.value = name;
  form.media.value = media;
  if (!form.onsubmit) installLobby();
}

/** What to tell a person whose join was refused, by the API's error code. */
function joinRefusal(room, error) {
  const reasons = {
    missing_join_token: `"${room}" is open by invitation only: open the link you were given.`,
    join_token_expired: `Your invitation to "${room}" has expired: ask for a new link.`,
    room_not_allowed: `Your invitation is for another room, not "${room}".`,
    invalid_join_token: `Your invitation link for "${room}" is not valid (${error.message}).`,
    too_many_joins: `Too many joins from your network just now: ${error.message}.`,
    invalid_room_key: `The room key in this link is not valid (${error.message}): open the link exactly as it was shared.`,
    e2ee_unavailable: `This link is end-to-end encrypted, which needs HTTPS or localhost: ${error.message}.`,
  };
  return reasons[error.code] ?? `Could not join "${room}": ${error.message}`;
}
