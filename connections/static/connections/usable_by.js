// A configuration's login list: the connection autocomplete asks only for the connections the configuration's
// project may use (its own and its ancestors'), following the project field as it changes
// (`usable_by`, answered by ConnectionAdmin.get_search_results). Before a project is chosen, the server offers
// those of the projects the user administers.
"use strict";
{
    function project() {
        const field = document.getElementById("id_project");
        if (field && field.value) {
            return field.value;
        }
        const saved = document.querySelector("[data-usable-by]");
        return saved ? saved.dataset.usableBy : "";
    }

    window.addEventListener("load", () => {
        if (!window.django || !window.django.jQuery) {
            return;
        }
        window.django.jQuery.ajaxPrefilter((options) => {
            const data = typeof options.data === "string" ? new URLSearchParams(options.data) : null;
            if (!data || data.get("model_name") !== "loginconnection" || data.get("field_name") !== "connection") {
                return;
            }
            const chosen = project();
            if (chosen) {
                data.set("usable_by", chosen);
                options.data = data.toString();
            }
        });
    });
}
