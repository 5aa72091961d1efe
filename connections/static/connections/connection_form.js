// The connection form: only the chosen type's fieldset shows (and, for Amazon ECR, only the fields its
// credentials type uses); the Test connection button posts the form's values and shows the answer in place.
// Without JavaScript every field shows and the button posts the form to the test view, which answers with a page.
"use strict";
{
    const ECR_ROWS = {
        "access-keys": ["access_key_id", "secret_access_key"],
        "temporary": ["access_key_id", "secret_access_key", "role_arn", "external_id"],
        "default-chain": [],
    };
    const ECR_CHOICE = ["access_key_id", "secret_access_key", "role_arn", "external_id"];

    function setShown(element, shown) {
        // A field the server reported an error on stays in sight, whatever the choice.
        element.hidden = !shown && !element.querySelector(".errorlist");
    }

    function showChosenType() {
        const type = document.getElementById("id_type");
        if (!type) {
            return;
        }
        for (const fieldset of document.querySelectorAll("fieldset.ds-type")) {
            setShown(fieldset, fieldset.classList.contains("ds-type-" + type.value));
        }
        const credentials = document.getElementById("id_credentials");
        if (credentials) {
            const used = ECR_ROWS[credentials.value] || ECR_CHOICE;  // none chosen yet: all of them
            for (const name of ECR_CHOICE) {
                const row = document.querySelector(".form-row.field-" + name);
                if (row) {
                    setShown(row, used.includes(name));
                }
            }
        }
    }

    function show(result, answer) {
        result.replaceChildren();
        result.className = "ds-test-result " + (answer.ok ? "ds-test-ok" : "ds-test-failed");
        const title = document.createElement("strong");
        title.textContent = answer.title;
        result.append(title);
        const lines = [...answer.steps, ...answer.errors];
        if (lines.length) {
            const list = document.createElement("ul");
            for (const line of lines) {
                const item = document.createElement("li");
                item.textContent = line;
                list.append(item);
            }
            result.append(list);
        }
    }

    async function test(event) {
        const button = event.currentTarget;
        const result = document.getElementById("test-connection-result");
        event.preventDefault();
        button.disabled = true;
        result.className = "ds-test-result";
        result.textContent = "Testing…";
        try {
            const response = await fetch(button.formAction, {
                method: "POST", body: new FormData(button.form), credentials: "same-origin",
                headers: {"Accept": "application/json"},
            });
            if (!response.ok) {
                throw new Error(response.status === 403 ? "you may not test this connection" : "HTTP " + response.status);
            }
            show(result, await response.json());
        } catch (error) {
            show(result, {ok: false, title: "✗ The test could not be run: " + error.message, steps: [], errors: []});
        } finally {
            button.disabled = false;
        }
    }

    document.addEventListener("DOMContentLoaded", () => {
        showChosenType();
        for (const id of ["id_type", "id_credentials"]) {
            const select = document.getElementById(id);
            if (select) {
                select.addEventListener("change", showChosenType);
            }
        }
        const button = document.getElementById("test-connection");
        if (button) {
            button.addEventListener("click", test);
        }
    });
}
